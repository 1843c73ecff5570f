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
import warnings
from typing import Any

import numpy as np

from ..events import Event
from .base import Detector, StepStats, quoted, robust_center_scale

__all__ = ["grad_spikes", "loss_spikes", "first_riser"]

#: Logged steps of per-layer gradient norms kept for attributing a spike.
RISE_HISTORY = 32
#: A layer has "risen" when its norm is this many times its own earlier median.
RISE_FACTOR = 2.0


def _push(window: tuple, value: Any, size: int) -> tuple:
    w = window + (value,)
    return w[-size:] if len(w) > size else w


def _track(hist: tuple, stats: StepStats) -> tuple:
    """Append this step's per-layer gradient norms to ``hist`` ((step, norms) pairs, the
    norms as measured: :func:`_log_rows` takes their logarithms when a spike asks, which is
    rare, instead of on every step); a model whose layer count changed starts a new history."""
    gn = stats.grad_norm
    if hist and len(hist[-1][1]) != len(gn):
        hist = ()
    return _push(hist, (stats.step, gn), RISE_HISTORY)


def _log_rows(hist: tuple) -> tuple:
    """``hist`` of :func:`_track` as :func:`first_riser` reads it: ``log10`` of each norm,
    NaN where it is not finite and positive."""
    out = []
    for step, gn in hist:
        g = np.asarray(gn, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append((step, np.where(np.isfinite(g) & (g > 0), np.log10(g), np.nan)))
    return tuple(out)


def first_riser(hist: tuple, names: tuple) -> tuple[str | None, int | None, float | None]:
    """Which layer's gradient norm rose first, before the newest step of ``hist``.

    For every layer: its baseline is the median of the older half of the history; it has
    *risen* from the first step of the unbroken run of steps, ending at the newest one, in
    which its norm stayed at least :data:`RISE_FACTOR` times that baseline. The layer whose
    run starts earliest rose first (ties: the larger rise now). Returns ``(name, steps
    before the newest step, factor over its baseline now)``, or ``(None, None, None)`` when
    no layer is above its baseline at the newest step (or there is too little history).
    """
    if len(hist) < 6:
        return None, None, None
    steps = np.array([s for s, _ in hist])
    H = np.vstack([r for _, r in hist])           # (T, L) log10 norms, NaN: not measured
    older = H[: len(hist) // 2]
    if np.all(np.isnan(older)):
        return None, None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns: layers never measured
        base = np.nanmedian(older, axis=0)
    up = H >= base + np.log10(RISE_FACTOR)       # NaN compares False: a gap ends a run
    now = up[-1]
    if not now.any():
        return None, None, None
    # length of the run of True ending at the last row, per layer
    run = np.zeros(H.shape[1], dtype=int)
    alive = np.ones(H.shape[1], dtype=bool)
    for t in range(len(hist) - 1, -1, -1):
        alive &= up[t]
        run += alive
    onset_idx = len(hist) - run                  # row index where each run starts
    rise_now = H[-1] - base
    cand = np.flatnonzero(now)
    best = min(cand, key=lambda j: (onset_idx[j], -rise_now[j]))
    lead = int(steps[-1] - steps[onset_idx[best]])
    return names[best], lead, float(10 ** rise_now[best])


def _riser_text(name, lead, factor) -> tuple[str, dict]:
    if name is None:
        return "", {}
    when = "at this step" if lead == 0 else f"{lead} step{'s' if lead != 1 else ''} before"
    return (f"; {quoted(name)} rose first ({when}; now {factor:.3g}x its earlier median)",
            {"rose_first": name, "rose_first_steps_before": lead, "rose_first_factor": factor})


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

    floor = math.log10(min_factor)

    def init():
        return {"w": (), "since": None, "prev": None, "norms": ()}

    def update(stats: StepStats, state: dict):
        g = stats.global_grad_norm
        if stats.skip_reason == "scaler" or g is None or not math.isfinite(g) or g <= 0:
            return [], state
        lg = math.log10(g)
        w = state["w"]
        hist = _track(state.get("norms", ()), stats)
        events: list[Event] = []
        since = state["since"]
        spike = False
        # a spike needs lg - median > log10(min_factor); the median is at least min(w), so a
        # value within that factor of the window's least is none (the usual step: no sort)
        if len(w) >= warmup and lg - min(w) > floor:
            med, sig = robust_center_scale(w)
            thr = max(z * sig, floor)
            spike = (lg - med) > thr
            if spike and since is None:
                since = stats.step
                layer = None
                prev = state["prev"]
                gn = stats.grad_norm
                if prev is not None and len(prev) == len(gn):
                    prev = np.where(np.isfinite(prev), prev, np.nan)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        growth = gn / prev
                    growth = np.where(np.isfinite(growth), growth, -np.inf)
                    if growth.size and np.isfinite(growth.max()) and growth.max() > 0:
                        layer = stats.layers.names[int(np.argmax(growth))]
                factor = 10 ** (lg - med)
                where = f"; the largest growth is in {quoted(layer)}" if layer else ""
                rose, rose_ev = _riser_text(*first_riser(_log_rows(hist), stats.layers.names))
                events.append(Event(
                    step=stats.step, kind="grad_spike", layer=layer, severity="warning",
                    message=(f"Gradient-norm spike at step {stats.step}: {g:.3g}, {factor:.3g}x the "
                             f"running median {10 ** med:.3g}{where}{rose}."),
                    evidence={"grad_norm": g, "median": 10 ** med, "factor": factor,
                              "mad": sig, "z": (lg - med) / sig if sig > 0 else math.inf,
                              "lr": stats.lr, "worst_layer": layer, **rose_ev},
                    since=stats.step))
        if not spike:
            since = None
        # this step's norms, kept as measured (their non-finite entries are masked at a spike)
        return events, {"w": _push(w, lg, window), "since": since, "prev": stats.grad_norm, "norms": hist}

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
        return {"w": (), "since": None, "initial": None, "norms": ()}

    def update(stats: StepStats, state: dict):
        x = stats.loss
        if stats.skip_reason != "scaler" and len(stats.grad_norm) and np.isfinite(stats.grad_norm).any():
            state = {**state, "norms": _track(state.get("norms", ()), stats)}
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
            if x > max(w):   # (a spike is above the whole window: the usual step needs no sort)
                med, sig = robust_center_scale(w)
                thr = max(z * sig, min_rel * abs(med), min_initial * initial)
                spike = (x - med) > thr
            if spike and since is None:
                since = stats.step
                rose, rose_ev = _riser_text(*first_riser(_log_rows(state.get("norms", ())), stats.layers.names))
                events.append(Event(
                    step=stats.step, kind="loss_spike", layer=rose_ev.get("rose_first"), severity="warning",
                    message=(f"Loss spike at step {stats.step}: {x:.4g} against a running median of "
                             f"{med:.4g} ({(x - med) / sig if sig > 0 else math.inf:.3g} robust "
                             f"standard deviations above it){rose}."),
                    evidence={"loss": x, "median": med, "mad": sig, "initial_loss": initial,
                              "lr": stats.lr, "grad_norm": stats.global_grad_norm, **rose_ev},
                    since=stats.step))
        if not spike:
            since = None
        return events, {"w": _push(w, x, window), "since": since, "initial": initial,
                        "norms": state.get("norms", ())}

    return Detector(init, update, "loss_spikes")
