"""Detectors: pure ``(init, update)`` pairs over per-step statistics, returning events.

Each detector has the shape of an optax ``GradientTransformation``::

    det = gradhealth.detectors.default_detectors()
    state = det.init()
    events, state = det.update(stats, state)     # stats: a StepStats

so it can run live inside :func:`gradhealth.watch` or offline over any sequence of
:class:`StepStats` (tests build them by hand).

================================ =========================================================
detector                         kinds it emits
================================ =========================================================
:func:`nonfinite`                ``nonfinite`` (loss, gradients, parameters)
:func:`exploding_vanishing`      ``exploding`` / ``vanishing`` (depth and time trends)
:func:`update_ratio`             ``update_ratio`` (a layer stops learning / jumps)
:func:`grad_spikes`              ``grad_spike``
:func:`loss_spikes`              ``loss_spike``
:func:`early_divergence`         ``divergence`` (before the spike detectors have a baseline)
:func:`dead_units`               ``dead_units``
:func:`saturation`               ``saturated``
================================ =========================================================
"""

from .base import (
    Detector,
    LayerTable,
    StepStats,
    chain,
    robust_center_scale,
    run_detectors,
    safe_text,
    theil_sen_slope,
)
from .depth import depth_trend, exploding_vanishing, update_ratio
from .divergence import early_divergence
from .nonfinite import nonfinite
from .spikes import grad_spikes, loss_spikes
from .units import dead_units, saturation

__all__ = [
    "Detector",
    "LayerTable",
    "StepStats",
    "chain",
    "run_detectors",
    "default_detectors",
    "nonfinite",
    "exploding_vanishing",
    "update_ratio",
    "grad_spikes",
    "loss_spikes",
    "early_divergence",
    "dead_units",
    "saturation",
    "depth_trend",
    "robust_center_scale",
    "theil_sen_slope",
    "safe_text",
]


def default_detectors() -> Detector:
    """Every detector with its default thresholds, chained (the watcher's default)."""
    return chain(nonfinite(), exploding_vanishing(), update_ratio(), grad_spikes(), loss_spikes(),
                 early_divergence(), dead_units(), saturation(), name="default")
