"""What a watched run records: its events, the history of logged steps, and the run store.

The watcher measures; :class:`RunLog` keeps. Every event (detectors, guard, replay,
gradhealth's own failures) goes through :meth:`RunLog.emit` into ``events`` and, when a run
directory was given, into the store; every completed step goes through
:meth:`RunLog.record` (detectors, ``history``, store rows). A failure of the store, the
detectors or the prescriber never reaches the training loop: it becomes one ``internal``
event per site and a :class:`WatchWarning`.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..detectors.base import StepStats, safe_text, update_many
from ..errors import ParameterError
from ..events import Event
from ._advice import preload, with_remedy
from ._assemble import Measured, layer_block, step_row, step_stats

__all__ = ["RunLog", "WatchWarning", "appending_store", "SETTLE_EVERY", "SETTLE_WITHIN_S"]

#: Completed logged steps assembled and run through the detectors together (see RunLog.settle).
SETTLE_EVERY = 20
#: ... or as soon as the oldest of them has waited this long (seconds).
SETTLE_WITHIN_S = 0.25
_now = time.monotonic


class WatchWarning(UserWarning):
    """Something the watcher found, or could not do, while training went on."""


_STORE_MODE: ContextVar[str] = ContextVar("gradhealth_store_mode", default="w")


@contextmanager
def appending_store() -> Iterator[None]:
    """Watchers created inside this block append to their ``run_dir``'s existing run instead of
    replacing it: the way to resume a run (the Lightning and HF callbacks use it when they
    resume from a checkpoint)::

        with appending_store():
            w = gradhealth.watch(model, opt, run_dir="runs/exp1")
        w.load_state_dict(checkpoint["watch"])   # before the first resumed step

    ``load_state_dict`` then deletes what the store holds from the resumed step on (the steps
    an interrupted process ran after its last checkpoint), so the resumed steps replace them
    and ``load_run`` reads one continuous run. Without ``load_state_dict`` the appended steps
    restart at 0 and merge into the stored ones: always load the state."""
    token = _STORE_MODE.set("a")
    try:
        yield
    finally:
        _STORE_MODE.reset(token)


def _rank_dir(run_dir: Any) -> tuple[Any, tuple[int, int] | None]:
    """Under torch.distributed with several ranks, one store per rank: rank 0 writes
    ``run_dir`` (what ``gradhealth summary RUN_DIR`` reads), rank r > 0 ``run_dir/rank{r}``
    (two ranks writing one SQLite file would replace each other's run)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            r, n = dist.get_rank(), dist.get_world_size()
            return (run_dir if r == 0 else Path(run_dir) / f"rank{r}"), (r, n)
    except Exception:   # a process group in a strange state: write where asked
        pass
    return run_dir, None   # unchanged: RunStore validates it (a blank string is a ParameterError)


def _encode(x: Any) -> Any:
    """Detector state -> plain data (see :meth:`RunLog.state_dict`); :func:`_decode` inverts it."""
    import numpy as np

    if type(x).__name__ == "_Failed":   # a chained detector that last raised: its state before
        return _encode(x.state)
    if isinstance(x, np.ndarray):
        return {"__ndarray__": _encode(x.tolist()), "dtype": str(x.dtype), "shape": list(x.shape)}
    if isinstance(x, np.generic):
        return _encode(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": repr(x)}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, (set, frozenset)):
        return {"__set__": [_encode(v) for v in sorted(x, key=repr)], "frozen": isinstance(x, frozenset)}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    return x


def _decode(x: Any) -> Any:
    import numpy as np

    if isinstance(x, list):
        return [_decode(v) for v in x]
    if isinstance(x, dict):
        if "__ndarray__" in x:
            return np.array(_decode(x["__ndarray__"]), dtype=x["dtype"]).reshape(x["shape"])
        if "__float__" in x:
            return float(x["__float__"])
        if "__tuple__" in x:
            return tuple(_decode(v) for v in x["__tuple__"])
        if "__set__" in x:
            items = [_decode(v) for v in x["__set__"]]
            return frozenset(items) if x["frozen"] else set(items)
        if "__dict__" in x:
            return {_decode(k): _decode(v) for k, v in x["__dict__"]}
    return x


class RunLog:
    """Events, history and store of one watched run.

    Args:
        config: the watcher's :class:`~gradhealth.watch.config.WatchConfig` (detectors,
            ``history_size``).
        clock: returns the current training step (stamped on ``internal`` events).
    """

    def __init__(self, config, clock, model=None):
        self.config = config
        self._clock = clock
        self._model = model          # read once, lazily, for a functional activation (below)
        self.events: list[Event] = []
        self.history: deque[StepStats] = deque(maxlen=config.history_size)
        self.store: Any = None
        self.model_info: dict = {}          # what the prescriptions know about the model
        self._det_state = config.detectors.init()
        self._sites: dict[str, int] = {}
        self._t0 = time.time()
        self._appending = False     # the store continues a run (appending_store)
        self._events_before = 0     # events of the sessions before a resume (in the store)
        self._done: list[tuple] = []   # completed steps not yet settled (complete(), settle())
        self._done_since = 0.0
        # the training thread and the idle settler (below) take turns; uncontended on the hot path
        self._lock = threading.RLock()
        self._idle: _IdleSettler | None = None
        preload()   # (the first event's prescription must not import inside a training step)

    # ------------------------------------------------------------------ the store

    def open_store(self, run_dir: str | Path, meta: dict) -> None:
        """Open ``run_dir/run.sqlite`` and write the run's metadata."""
        from ..store import RunStore

        run_dir, rank = _rank_dir(run_dir)
        if rank is not None:
            meta = {**meta, "rank": rank[0], "world_size": rank[1]}
        mode = _STORE_MODE.get()
        try:
            self.store = RunStore(run_dir, mode=mode)
            self._appending = mode == "a"
            self.store.write_meta(meta)
        except ParameterError:     # a bad run_dir is the caller's error: say so
            raise
        except Exception as exc:   # a store that cannot start must not stop watch()
            self.internal("store", exc)
        self._check_store()

    def write_layers(self, rows: list[dict]) -> None:
        if self.store is not None:
            self.store.write_layers(rows)

    def flush(self) -> None:
        self.settle()
        if self.store is not None:
            try:
                self.store.flush()
            except Exception as exc:  # pragma: no cover - never raises by contract
                self.internal("store", exc)

    def close(self, final_meta: dict) -> None:
        """Write the final metadata and close the store (idempotent)."""
        if self._idle is not None:
            self._idle.stop()
            self._idle = None
        self.settle()
        if self.store is None:
            return
        if self._appending and "n_events" in final_meta:   # the whole run's, not this session's
            final_meta = {**final_meta, "n_events": final_meta["n_events"] + self._events_before}
        try:
            self.store.write_meta(final_meta)
            self.store.close()
        except Exception as exc:  # pragma: no cover - the store never raises by contract
            self.internal("store", exc)
        self._check_store()

    # ------------------------------------------------------------------ events

    def internal(self, site: str, exc: BaseException) -> None:
        """Report an exception raised inside gradhealth's own code, once per site."""
        n = self._sites.get(site, 0)
        self._sites[site] = n + 1
        if n:
            return
        msg = (f"gradhealth's {site} hook failed ({type(exc).__name__}: {safe_text(exc)}); training "
               "continues, but the statistics that hook collects are missing from now on where it fails.")
        try:
            warnings.warn(msg, WatchWarning, stacklevel=4)
        except WatchWarning:
            raise
        except Exception:  # pragma: no cover
            pass
        self.emit([Event(step=self._clock(), kind="internal", layer=None, severity="warning", message=msg,
                         evidence={"site": site, "error": f"{type(exc).__name__}: {exc}"[:500]})])

    def emit(self, events: list[Event]) -> None:
        """Append ``events`` (and mirror them to the store), after the events of the steps
        completed before them (:meth:`settle`)."""
        if not events:
            return
        with self._lock:
            if self._done:
                self.settle()
            self.events.extend(events)
            if self.store is not None:
                try:
                    self.store.append_events(events)
                except Exception:  # pragma: no cover - never raises by contract
                    pass

    def with_remedy(self, e: Event) -> Event:
        """``e`` with the code of its first prescription as ``remedy``. A model whose
        activations are all functional (``torch.relu`` in ``forward``) has none in the layer
        table: then one ``torch.fx`` trace, at the first remedy, finds it, so that watch
        prescribes what probe does (``he_(model, activation='relu')``, not a gain-1 init)."""
        try:
            self._trace_once()
            return with_remedy(e, self.model_info)
        except Exception as exc:
            self.internal("prescribe", exc)
            return e

    def _trace_once(self) -> None:
        """The model's activation from one ``torch.fx`` trace, when its layer table has none
        (see :meth:`with_remedy`); at the first remedy, in the training thread only: a trace
        patches ``nn.Module.__call__`` process-wide and runs the model's Python. A remedy the
        idle settler writes before that prescribes from the layer table alone."""
        if self._model is None or (self._idle is not None and threading.current_thread() is self._idle.thread):
            return
        model, self._model = self._model, None          # once
        if "activation" not in self.model_info:
            from ..remedies._plan import traced_activation

            act = traced_activation(model)
            if act:
                self.model_info["activation"] = act

    def summary(self, steps: int, skipped: int) -> str:
        """A few plain-text lines: steps, skipped steps, the first 20 events (names escaped)."""
        self.settle()
        lines = [f"{steps} steps watched, {skipped} skipped, {len(self.events)} events"]
        self._check_store()
        rows, events = self.lost()
        if rows or events:
            lines.append(f"  run store: {rows} step/layer rows and {events} events could not be written "
                         "(events are kept in watcher.events)")
        for e in self.events[:20]:
            where = f" [{safe_text(e.layer)}]" if e.layer else ""
            lines.append(f"  step {e.step}: {e.kind}{where}: {e.message}")
        if len(self.events) > 20:
            lines.append(f"  ... and {len(self.events) - 20} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        """The detectors' state (their windows and baselines) as plain data: dicts, lists,
        strings and numbers only (NumPy arrays and tuples tagged), so that a checkpoint holding
        it loads with ``torch.load(weights_only=True)`` and dumps as JSON."""
        self.settle()
        return {"detectors": _encode(self._det_state), "n_events": self._events_before + len(self.events)}

    def load_state_dict(self, state: Any, policy, optimizers: list) -> tuple[int, int]:
        """Restore what :meth:`Watcher.state_dict` saved; returns ``(step, skipped)``."""
        ok = (isinstance(state, dict) and state.get("version") == 1 and isinstance(state.get("step"), int)
              and isinstance(state.get("log"), dict) and "detectors" in state["log"])
        if not ok:
            raise ParameterError("state", "Watcher.load_state_dict", "a dict from Watcher.state_dict()",
                                 type(state).__name__ if not isinstance(state, dict) else sorted(state),
                                 "pass watcher.state_dict() as saved with the checkpoint.")
        self.settle()
        self._det_state = _decode(state["log"]["detectors"])
        policy.load_state_dict(state.get("policy") or {}, optimizers)
        step = int(state["step"])
        if self._appending and self.store is not None:
            # what the interrupted process recorded from the resumed step on is re-done now
            n = state["log"].get("n_events", 0)
            self._events_before = n if isinstance(n, int) else 0
            try:
                self.store.truncate(step)
                self.store.write_meta({"resumed_from_step": step})
            except Exception as exc:  # pragma: no cover - the store never raises by contract
                self.internal("store", exc)
        return step, int(state.get("skipped", 0))

    # ------------------------------------------------------------------ steps

    def complete(self, rec, table, layer_of, loss: float | None, urgent: bool = False) -> None:
        """A logged step whose values are all on the host (a read-back
        :class:`~gradhealth.watch._record.StepRecord`, the layer table and the layer of each
        parameter position at that step). It is assembled and run through the detectors, the
        history and the store with the next few: at the latest every :data:`SETTLE_EVERY`
        completed steps or after :data:`SETTLE_WITHIN_S` seconds (checked at each step's end,
        :meth:`settle_due`), at once when ``urgent`` (a skipped
        or non-finite step), and before anything reads the events, the history or the store
        or emits an event (so events stay in step order). One batch of a few steps runs in a
        warm cache: on a step of a few milliseconds, cheaper than one step at a time."""
        with self._lock:
            done = self._done
            done.append((rec, table, layer_of, loss, self.model_info))
            if len(done) == 1:
                self._done_since = _now()
                if self._idle is None:
                    self._idle = _IdleSettler(self)
            if urgent or len(done) >= SETTLE_EVERY or _now() - self._done_since >= SETTLE_WITHIN_S:
                self.settle()

    def settle_due(self) -> None:
        """:meth:`settle` if the oldest waiting step has waited :data:`SETTLE_WITHIN_S` (called
        once a training step, so that a run logging rarely does not hold its events back)."""
        if self._done and _now() - self._done_since >= SETTLE_WITHIN_S:
            self.settle()

    def settle(self) -> None:
        """Assemble every completed step not settled yet, then :meth:`record` them (in order)."""
        if not self._done:
            return
        with self._lock:
            self._settle_locked()

    def _settle_locked(self) -> None:
        while self._done:
            done, self._done = self._done, []
            steps = []
            for rec, table, layer_of, loss, info in done:
                try:
                    stats, measured = step_stats(rec, table, layer_of, loss, info)
                except Exception as exc:
                    self.internal("statistics", exc)
                    self.emit(rec.late)
                    continue
                steps.append((stats, measured, rec.t, rec.late))
            if steps:
                self.record(steps)

    def record(self, steps: list[tuple[StepStats, Measured, float, list[Event]]]) -> None:
        """Completed steps ``(stats, measured, wall time, late events)``, in step order: the
        detectors (over all of them at once, :func:`~gradhealth.detectors.base.update_many`),
        then per step its events (with remedies; the step's late events after the detectors'),
        the history and the store rows."""
        seq = [s for s, _, _, _ in steps]
        det = self.config.detectors
        try:
            per_step, self._det_state = update_many(det, seq, self._det_state)
        except Exception:          # (a detector of the user's own, not chained): step by step
            per_step = []
            for stats in seq:
                try:
                    events, self._det_state = det.update(stats, self._det_state)
                except Exception as exc:
                    self.internal("detectors", exc)
                    events = []
                per_step.append(events)
        for (stats, _, _, late), events in zip(steps, per_step):
            self.history.append(stats)
            self.emit([self.with_remedy(e) for e in events] + late)
        if self.store is not None:
            try:
                self.store.append_steps([step_row(s, m, t - self._t0) for s, m, t, _ in steps])
                self.store.append_layer_block(layer_block([(s, m) for s, m, _, _ in steps]))
            except Exception as exc:
                self.internal("store", exc)
            self._check_store()

    def _check_store(self) -> None:
        """The store stopped writing (dead writer, disk full, lock held too long): one
        ``internal`` event; the events stay in memory, the lost rows are counted."""
        st = self.store
        if st is None or getattr(st, "error", None) is None or "store stopped" in self._sites:
            return
        self._sites["store stopped"] = 1
        self.emit([Event(step=self._clock(), kind="internal", layer=None, severity="warning",
                         message=f"The run store stopped writing: {safe_text(st.error)}",
                         evidence={"site": "store", "error": str(st.error)[:500]})])

    def lost(self) -> tuple[int, int]:
        """``(step and layer rows, events)`` the store could not write."""
        st = self.store
        if st is None:
            return 0, 0
        return int(getattr(st, "dropped_rows", 0)), len(getattr(st, "pending_events", ()))


class _IdleSettler:
    """Settles the completed steps of a run that stopped stepping for a while (a long
    evaluation, a hang, a pause before the process is killed): without it they would wait in
    memory for the next step, and a process that dies then would leave none of them in the
    store (``top`` would show nothing new meanwhile). A daemon thread that wakes every
    :data:`SETTLE_WITHIN_S` and settles only when the oldest waiting step has waited that long
    and the training thread is not inside the run log itself (it never waits for the lock). It
    never runs the first prescription's model trace (see :meth:`RunLog._trace_once`)."""

    def __init__(self, log: RunLog):
        self._stop = threading.Event()
        ref = weakref.ref(log)
        self.thread = threading.Thread(target=self._run, args=(ref, self._stop), name="gradhealth-settle",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _run(ref, stop: threading.Event) -> None:
        while not stop.wait(SETTLE_WITHIN_S):
            log = ref()
            if log is None:
                return
            try:
                ready = log._done and _now() - log._done_since >= SETTLE_WITHIN_S
                if ready and log._lock.acquire(blocking=False):
                    try:
                        log._settle_locked()
                    finally:
                        log._lock.release()
            except Exception:   # (settle reports its own failures; never let the thread die loud)
                pass
            del log
