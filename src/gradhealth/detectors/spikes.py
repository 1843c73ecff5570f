"""Gradient-norm spikes and loss spikes against a robust running baseline.

Both detectors keep a window of recent values and compare each new one with the window's
median, in units of ``1.4826 * MAD`` (a robust standard deviation: the spikes being looked
for do not inflate it, as they would a plain standard deviation). A value is a spike when it
is far above the baseline *both* in those units *and* by a minimum factor -- the second
condition keeps a very quiet history (MAD close to 0) from turning noise into alarms.
Nothing is reported during the warm-up (the first ``warmup`` values), when training moves
fast and no baseline exists. One event per episode: consecutive spiking steps are one spike.
"""

from __future__ import annotations

import math

import numpy as np

from ..events import Event
from .base import Detector, StepStats, robust_center_scale, safe_text

__all__ = ["grad_spikes", "loss_spikes"]


def _push(window: tuple, value: float, size: int) -> tuple:
    w = window + (value,)
    return w[-size:] if len(w) > size else w


def grad_spikes(*, window: int = 50, warmup: int = 30, z: float = 6.0, min_factor: float = 6.0) -> Detector:
    """Detector of spikes of the global gradient norm (before clipping).

    Works on ``log10`` of the norm (norms are multiplicative: a 10x jump matters the same at
    1e-3 as at 10). A spike: ``log10(g) - median > max(z * sigma, log10(min_factor))`` over the
    last ``window`` finite logged norms, once ``warmup`` of them exist. The event's layer is
    the one whose gradient norm grew most since the previous logged step.

    Args:
        window: number of past values in the baseline.
        warmup: values needed before any alarm.
        z: threshold in robust standard deviations.
        min_factor: the norm must also exceed ``min_factor`` times the median.
    """

    def init():
        return {"w": (), "since": None, "prev": None}

    def update(stats: StepStats, state: dict):
        g = stats.global_grad_norm
        if stats.skip_reason == "scaler" or g is None or not math.isfinite(g) or g <= 0:
            return [], state
        lg = math.log10(g)
        w = state["w"]
        events: list[Event] = []
        since = state["since"]
        spike = False
        if len(w) >= warmup:
            med, sig = robust_center_scale(w)
            thr = max(z * sig, math.log10(min_factor))
            spike = (lg - med) > thr
            if spike and since is None:
                since = stats.step
                layer = None
                prev = state["prev"]
                gn = stats.grad_norm
                if prev is not None and len(prev) == len(gn):
                    with np.errstate(divide="ignore", invalid="ignore"):
                        growth = gn / prev
                    growth = np.where(np.isfinite(growth), growth, -np.inf)
                    if growth.size and np.isfinite(growth.max()) and growth.max() > 0:
                        layer = stats.layers.names[int(np.argmax(growth))]
                factor = 10 ** (lg - med)
                where = f"; the largest growth is in {safe_text(layer)!r}" if layer else ""
                events.append(Event(
                    step=stats.step, kind="grad_spike", layer=layer, severity="warning",
                    message=(f"Gradient-norm spike at step {stats.step}: {g:.3g}, {factor:.3g}x the "
                             f"running median {10 ** med:.3g}{where}."),
                    evidence={"grad_norm": g, "median": 10 ** med, "factor": factor,
                              "mad": sig, "z": (lg - med) / sig if sig > 0 else math.inf,
                              "lr": stats.lr, "worst_layer": layer},
                    since=stats.step))
        if not spike:
            since = None
        prev = np.where(np.isfinite(stats.grad_norm), stats.grad_norm, np.nan)
        return events, {"w": _push(w, lg, window), "since": since, "prev": prev}

    return Detector(init, update, "grad_spikes")


def loss_spikes(*, window: int = 50, warmup: int = 20, z: float = 6.0, min_rel: float = 0.5,
                min_initial: float = 0.5) -> Detector:
    """Detector of upward loss spikes (a loss that drops is never an alarm).

    A spike: the loss is above every value of the window, and its excess over the window's
    median exceeds ``z`` robust standard deviations, ``min_rel`` times the median's magnitude,
    *and* ``min_initial`` times the median loss of the first ``warmup`` steps (the run's
    initial loss scale). The last condition is what keeps healthy training quiet once its
    loss approaches 0: a hard mini-batch can then be 50x the median and many MADs above it
    (calibrated on scikit-learn digits, batch >= 32, SGD and Adam: a hard batch stays below
    0.3x the initial loss, a 20x learning-rate spike jumps by > 1x). Works in linear units, so
    losses may be negative.

    Args:
        window: number of past losses in the baseline.
        warmup: losses needed before any alarm (they also fix the initial loss scale).
        z: threshold in robust standard deviations.
        min_rel: the jump must also exceed this fraction of the median's magnitude.
        min_initial: ... and this fraction of the initial loss scale.
    """

    def init():
        return {"w": (), "since": None, "initial": None}

    def update(stats: StepStats, state: dict):
        x = stats.loss
        if x is None or not math.isfinite(x) or stats.skip_reason == "scaler":
            return [], state
        w = state["w"]
        since = state["since"]
        initial = state["initial"]
        events: list[Event] = []
        spike = False
        if len(w) >= warmup:
            if initial is None:
                initial = abs(robust_center_scale(w[:warmup])[0])
            med, sig = robust_center_scale(w)
            thr = max(z * sig, min_rel * abs(med), min_initial * initial)
            spike = (x - med) > thr and x > max(w)
            if spike and since is None:
                since = stats.step
                events.append(Event(
                    step=stats.step, kind="loss_spike", layer=None, severity="warning",
                    message=(f"Loss spike at step {stats.step}: {x:.4g} against a running median of "
                             f"{med:.4g} ({(x - med) / sig if sig > 0 else math.inf:.3g} robust "
                             "standard deviations above it)."),
                    evidence={"loss": x, "median": med, "mad": sig, "initial_loss": initial,
                              "lr": stats.lr, "grad_norm": stats.global_grad_norm},
                    since=stats.step))
        if not spike:
            since = None
        return events, {"w": _push(w, x, window), "since": since, "initial": initial}

    return Detector(init, update, "loss_spikes")
