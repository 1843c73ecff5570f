"""The watchers attached right now (weakly held): a second watcher on the same parameters is
an error, since two would double every hook and disagree about steps."""

from __future__ import annotations

import weakref

from ..errors import ModelError

__all__ = ["register", "unregister", "check_overlap", "settle_all"]

_ACTIVE: list[weakref.ref] = []


def register(watcher) -> None:
    _ACTIVE.append(weakref.ref(watcher))


def unregister(watcher) -> None:
    _ACTIVE[:] = [r for r in _ACTIVE if r() is not None and r() is not watcher]


def check_overlap(watcher) -> None:
    """ModelError if an active watcher already watches ``watcher.model`` or any of its parameters."""
    mine = {id(p) for p in watcher._map.params}
    for ref in list(_ACTIVE):
        other = ref()
        if other is None or not other._active:
            continue
        theirs = {id(p) for p in other._map.params}
        if other.model is watcher.model or (mine & theirs):
            what = "this model" if other.model is watcher.model else "parameters of this model"
            raise ModelError(
                f"gradhealth.watch: {what} is already watched by another active Watcher "
                f"({type(other.model).__name__}, step {other.step}). Two watchers on the same "
                "parameters would double every hook and disagree about steps. Fix: leave the first "
                "`with gradhealth.watch(...)` block (or call watcher.remove()) before watching again.")


def settle_all() -> None:
    """At interpreter exit: the completed steps of the watchers never removed reach their
    history and store (the store's own exit hook, registered before this one, runs after it)."""
    for ref in list(_ACTIVE):
        w = ref()
        if w is not None and getattr(w, "_active", False):
            try:
                w._log.settle()
            except Exception:   # pragma: no cover - at exit, nothing to report to
                pass
