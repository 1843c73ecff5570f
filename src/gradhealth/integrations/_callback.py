"""What the Lightning and Hugging Face callbacks share: the lazily built framework subclass, the
watcher's lifecycle (attach, the undo list, detach), the event counts they log, and the watcher's
state for a checkpoint."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["real_class", "WatchingCallback", "EventCounts", "continue_fresh"]


def real_class(namespace: dict, name: str, cls: type, base: Callable[[], type]) -> type:
    """``cls`` combined with the framework's callback class ``base()``, built on first use and
    kept in ``namespace`` under ``name`` (so that unpickling in another process finds it)."""
    real = namespace.get(name)
    if real is None:
        real = type(name, (cls, base()), {"__module__": namespace["__name__"], "__doc__": cls.__doc__})
        namespace[name] = real
    return real


def continue_fresh(watcher, step: int, where: str, why: str, fix: str) -> None:
    """A resumed run without the watcher's saved state: continue at the framework's ``step`` (the
    step numbers and the run store the watcher appends to go on) with empty detector windows, and
    say so in a ``WatchWarning``."""
    from ..watch import WatchWarning

    fresh = watcher.state_dict()
    fresh["step"] = step
    watcher.load_state_dict(fresh)
    warnings.warn(f"gradhealth: training resumes at step {step} but the watcher's state could not be read from "
                  f"{where} ({why}); the watcher continues at step {step} in the same run store, with empty "
                  f"detector windows (their baselines start again). Fix: {fix}", WatchWarning, stacklevel=3)


class EventCounts:
    """A watcher's events counted by kind, for a framework's logger (``gradhealth/<kind>``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts: dict[str, int] = {}
        self._seen = 0

    def update(self, watcher, settle: bool = True) -> bool:
        """Count the events added since the last call; whether there were any.

        ``settle=False`` (a callback run on every step) counts the events of the steps the
        watcher has settled so far without settling the others now: they arrive with the
        next batch (a few steps later; a non-finite or skipped step settles at once), so the
        watcher keeps assembling its steps a few at a time."""
        events = watcher.events if settle else watcher._log.events
        if len(events) == self._seen:
            return False
        for e in events[self._seen:]:
            self.counts[e.kind] = self.counts.get(e.kind, 0) + 1
        self._seen = len(events)
        return True

    def metrics(self) -> dict[str, int]:
        return {f"gradhealth/{k}": v for k, v in self.counts.items()}


class WatchingCallback:
    """The state both callbacks keep: the watch options, the watcher of the current (or last)
    run, the error that stopped it, what to undo at the end, and the event counts."""

    def __init__(self, run_dir: Any = None, watch_options: dict | None = None):
        self.run_dir = run_dir
        self.watch_options = dict(watch_options or {})
        self.watcher = None
        self.error = None
        self._undo: list = []
        self._events = EventCounts()

    def _detach(self) -> None:
        """Remove the watcher and undo every wrapper and hook, last first (idempotent)."""
        if self.watcher is not None:
            self.watcher.remove()
        for undo in reversed(self._undo):
            undo()
        self._undo = []
