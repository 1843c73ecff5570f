"""The remedy attached to a watcher event: the first prescription that fits it."""

from __future__ import annotations

from dataclasses import replace

from ..events import Event

__all__ = ["DATA_REMEDY", "preload", "with_remedy"]

DATA_REMEDY = ("# the batch itself holds NaN/Inf: check the data pipeline, e.g. "
               "assert torch.isfinite(x).all() before model(x)")


def preload() -> None:
    """Import the prescriber and what it computes with now (a watcher calls this when it is
    created): the first event of a run would otherwise import them inside the training step
    that raised it -- about 420 modules, 1.5-1.8 s on a cold start, one step stalled."""
    from ..remedies import _critical, prescribe  # noqa: F401

    _critical.preload()


def with_remedy(e: Event, model_info: dict) -> Event:
    """``e`` with ``remedy`` set to the code of its first prescription.

    A fault the replay traced to the input batch gets the data-pipeline check instead; a
    ``guard`` event never gets ``skip_nonfinite`` (the guard already skips: prescribe what
    removes the cause). Exceptions from the prescriber propagate (the watcher turns them into
    an ``internal`` event).
    """
    replay = e.evidence.get("replay")
    if e.evidence.get("origin_direction") == "input" or (
            isinstance(replay, dict) and replay.get("direction") == "input"):
        return replace(e, remedy=DATA_REMEDY)
    from ..remedies.prescribe import prescribe

    ev = dict(e.evidence)
    if e.layer is not None:
        ev.setdefault("worst_layer", e.layer)
    rx = prescribe(e.kind, ev, layer=e.layer, model_info=model_info)
    if e.kind == "guard":
        rx = [r for r in rx if "skip_nonfinite" not in r.code]
    return replace(e, remedy=rx[0].code) if rx else e
