"""Dead units and saturated units, from the forward statistics of activation layers.

``dead_frac`` is the fraction of a ReLU-family layer's units whose output is exactly 0 for
every example of the batch (they pass no gradient at all); ``sat_frac`` is the fraction of
a saturating layer's outputs in the flat tails (``|tanh| > 0.99``, ``sigmoid`` outside
``[0.01, 0.99]``, at the bounds of a hard tanh), where the derivative is ~0. Both are
measured on the watcher's detail schedule; a layer is reported once it stays above the
threshold for ``patience`` consecutive measurements, and again after it recovers and
relapses.
"""

from __future__ import annotations

import numpy as np

from ..events import Event
from .base import Detector, StepStats, quoted, same_table_rows, with_quiet

__all__ = ["dead_units", "saturation"]


def _fraction_detector(field: str, kind: str, threshold: float, patience: int, name: str,
                       describe) -> Detector:
    def init():
        return {}

    def update(stats: StepStats, state: dict):
        vals = getattr(stats, field)
        finite = np.flatnonzero(np.isfinite(vals))
        if not finite.size:
            return [], state    # not measured at this step (off the detail schedule): nothing changes
        new = dict(state)
        events: list[Event] = []
        info = dict(stats.info or {})
        for i in finite:
            layer = stats.layers.names[i]
            n, first, emitted = state.get(layer, (0, stats.step, False))
            if vals[i] >= threshold:
                n, first = n + 1, (first if n else stats.step)
                if n >= patience and not emitted:
                    emitted = True
                    ev = dict(info)
                    act = stats.layers.activations[i] or None
                    ev.update({"fraction": float(vals[i]), "threshold": threshold,
                               "worst_layer": layer, "lr": stats.lr, "measurements": n})
                    if act:
                        ev["activation"] = act
                    events.append(Event(step=stats.step, kind=kind, layer=layer,
                                        severity="warning" if vals[i] < 0.9 else "error",
                                        message=describe(layer, float(vals[i]), stats.step, first),
                                        evidence=ev, since=first))
                new[layer] = (n, first, emitted)
            else:
                new[layer] = (0, stats.step, False)
        return events, new

    def quiet(stats_seq) -> np.ndarray:
        """Steps that did not measure ``field`` (off the detail schedule: most of them)."""
        V = same_table_rows(stats_seq, field)
        if V is None:
            return np.zeros(len(stats_seq), dtype=bool)
        return ~np.isfinite(V).any(axis=1)

    return with_quiet(Detector(init, update, name), quiet)


def dead_units(*, threshold: float = 0.5, patience: int = 2) -> Detector:
    """Detector of ReLU-family layers where at least ``threshold`` of the units are dead.

    Args:
        threshold: fraction of units that never activate on the batch (0..1).
        patience: consecutive measurements above the threshold before an event.
    """

    def describe(layer, frac, step, first):
        return (f"{100 * frac:.0f}% of the units of {quoted(layer)} are dead (output 0 for the "
                f"whole batch, so no gradient flows through them) since step {first}.")

    return _fraction_detector("dead_frac", "dead_units", threshold, patience, "dead_units", describe)


def saturation(*, threshold: float = 0.5, patience: int = 2) -> Detector:
    """Detector of saturating layers (tanh, sigmoid, ...) with at least ``threshold`` of their
    outputs in the flat tails.

    Args:
        threshold: fraction of saturated outputs (0..1).
        patience: consecutive measurements above the threshold before an event.
    """

    def describe(layer, frac, step, first):
        return (f"{100 * frac:.0f}% of the outputs of {quoted(layer)} are saturated (derivative "
                f"~0, the gradient through them vanishes) since step {first}.")

    return _fraction_detector("sat_frac", "saturated", threshold, patience, "saturation", describe)
