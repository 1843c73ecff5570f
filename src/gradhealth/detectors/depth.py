"""Exploding and vanishing gradients: geometric trends with depth (and with time), and
layers whose update-to-weight ratio collapses.

The backward signal of a deep network is a product of per-layer Jacobians, so its norm is
(close to) geometric in depth: ``||dL/dh_l|| ~ g**(L-l)``. On a log scale that is a straight
line, and its slope is the per-layer gain ``g`` (Schoenholz et al. 2017 call ``g**2`` the
mean-field ``chi_1``; Philipp et al. 2018 call the end-to-end ratio the gradient scale
coefficient). The detector fits that line robustly (Theil-Sen: the output layer's gradient,
which has the loss's own scale and often another width, does not bend it) and raises an
alarm when the fitted end-to-end ratio passes a threshold.

Parameter-gradient norms alone can hide the trend -- in a deep linear net with ``W = 1.5 I``
every weight gradient ``delta_l x_{l-1}^T`` has the same norm, because the backward signal
grows exactly as fast as the forward one -- so the primary signal is the gradient with
respect to each layer's *output* (``out_grad_rms``), measured on the watcher's detail
schedule and always at step 0. The parameter-gradient trend is a fallback with a stricter
threshold, used where output gradients were not measured.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ..events import Event
from .base import (
    Detector,
    StepStats,
    median,
    pairs,
    quoted,
    safe_text,
    same_table_rows,
    theil_sen_slope,
    theil_sen_slope_uniform,
    with_quiet,
)

__all__ = ["exploding_vanishing", "update_ratio", "depth_trend"]


def depth_trend(values: np.ndarray, *, min_points: int = 4) -> dict[str, Any] | None:
    """Robust geometric trend of positive ``values`` ordered from input side to output side.

    Returns None when fewer than ``min_points`` finite positive values remain; else a dict:
    ``growth_per_layer`` (factor by which the backward signal grows per position when going
    *backwards*, i.e. towards the input: > 1 explodes, < 1 vanishes), ``gsc`` (that factor
    over the whole span: input-side value / output-side value on the fitted line),
    ``ends_ratio`` (median of the first third over median of the last third, unfitted) and
    ``n`` (points used). The third-medians guard against a single jump masquerading as a trend.
    """
    v = np.asarray(values, dtype=float)
    pos = np.flatnonzero(np.isfinite(v) & (v > 0))
    if pos.size < min_points:
        return None
    x = np.arange(pos.size, dtype=float)
    y = np.log10(v[pos])
    b = theil_sen_slope(x, y)
    if not math.isfinite(b):
        return None
    k = max(1, pos.size // 3)
    ends = float(10 ** (np.median(y[:k]) - np.median(y[-k:])))
    return {"growth_per_layer": float(10 ** (-b)), "gsc": float(10 ** (-b * (pos.size - 1))),
            "ends_ratio": ends, "n": int(pos.size), "positions": pos}


def _trend_verdict(values: np.ndarray, min_points: int, ratio: float,
                   min_growth: float) -> tuple[dict[str, Any] | None, str | None]:
    """``(depth_trend(values), _verdict(that, ratio, min_growth))``, computed for less.

    The verdict needs the unfitted ends ratio beyond ``sqrt(ratio)`` (or its inverse), so when
    the ends already rule out both verdicts the Theil-Sen fit is skipped. Otherwise the one
    verdict the ends allow needs the fitted slope ``b`` (the median of the pairwise slopes) on
    one side of a threshold ``c``: counting the slopes at most ``c`` (a comparison and a sum)
    settles that without selecting the median, except within ``1e-9`` of ``c``, where the
    median itself is taken. The trend returned carries ``n``, ``positions`` and
    ``ends_ratio``; :func:`_fitted` adds the fitted ``growth_per_layer`` and ``gsc`` where an
    event needs them, value for value :func:`depth_trend`'s (the same medians,
    :func:`~gradhealth.detectors.base.median` being ``np.median`` to the bit, and the same
    pairwise slopes, :func:`theil_sen_slope_uniform`).
    """
    v = values if values.dtype == np.float64 else np.asarray(values, dtype=float)
    pos = np.flatnonzero(np.isfinite(v) & (v > 0))
    n = pos.size
    if n < min_points or n < 2:     # n < 2: no slope, depth_trend says None
        return None, None
    y = np.log10(v[pos])
    k = max(1, n // 3)
    ends = float(10 ** (median(y[:k]) - median(y[-k:])))
    tr = {"n": int(n), "positions": pos, "ends_ratio": ends, "y": y}
    if not (ratio > 1 and min_growth > 0):
        tr = _fitted(tr)     # (thresholds outside the documented range: the rule as written)
        return tr, _verdict(tr, ratio, min_growth)
    root = math.sqrt(ratio)
    if ends >= root:        # exploding needs gsc >= ratio and g >= min_growth: b <= c
        c, want = min(-math.log10(ratio) / (n - 1), -math.log10(min_growth)), "exploding"
    elif ends <= 1.0 / root:   # vanishing: b >= c
        c, want = max(math.log10(ratio) / (n - 1), math.log10(min_growth)), "vanishing"
    else:
        return tr, None
    i, j, dx = pairs(n)
    slopes = (y[j] - y[i]) / dx
    m = 1e-9 * (1.0 + abs(c))
    h = slopes.size // 2            # the median is slopes[h] sorted (odd), or the mean of [h-1], [h]
    below = int(np.count_nonzero(slopes <= c - m))
    if below >= h + 1:
        return tr, (want if want == "exploding" else None)     # b < c: clear of the threshold
    above = slopes.size - int(np.count_nonzero(slopes < c + m))
    if above >= h + 1:
        return tr, (want if want == "vanishing" else None)     # b > c
    tr = _fitted(tr)                                            # near the threshold: the exact rule
    return tr, _verdict(tr, ratio, min_growth)


def _fitted(tr: dict[str, Any]) -> dict[str, Any]:
    """A trend of :func:`_trend_verdict` with its fitted ``growth_per_layer`` and ``gsc``."""
    if "gsc" not in tr:
        b = theil_sen_slope_uniform(tr["y"])
        tr = {**tr, "growth_per_layer": float(10 ** (-b)), "gsc": float(10 ** (-b * (tr["n"] - 1)))}
    return tr


def _verdict(tr: dict | None, ratio: float, min_growth: float) -> str | None:
    if tr is None:
        return None
    g, gsc, ends = tr["growth_per_layer"], tr["gsc"], tr["ends_ratio"]
    if gsc >= ratio and g >= min_growth and ends >= math.sqrt(ratio):
        return "exploding"
    if gsc <= 1.0 / ratio and g <= 1.0 / min_growth and ends <= 1.0 / math.sqrt(ratio):
        return "vanishing"
    return None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _describe(verdict: str, what: str, tr: dict, worst: str | None, step: int) -> tuple[str, str]:
    """``(severity, message)`` of an exploding / vanishing event on signal ``what``."""
    g = tr["growth_per_layer"]
    sev = "error" if (tr["gsc"] >= 1e6 or tr["gsc"] <= 1e-6) else "warning"
    where = f" in {quoted(worst)}" if (what == "time" and worst) else ""
    unit = "time step" if what == "time" else "layer"
    if verdict == "exploding":
        desc = (f"The backward signal{where} grows {_fmt(g)}x per {unit} going back "
                f"({_fmt(tr['gsc'])}x over {tr['n']} {unit}s)")
    else:
        desc = (f"The backward signal{where} shrinks {_fmt(1 / g)}x per {unit} going back "
                f"(to {_fmt(tr['gsc'])} of its size over {tr['n']} {unit}s)")
    src = {"out_grad": "gradients w.r.t. layer outputs",
           "param_grad": "weight-gradient norms",
           "time": "gradients reaching each time step"}[what]
    return sev, f"{desc} at step {step} (measured on {src})."


def exploding_vanishing(*, ratio: float = 100.0, param_ratio: float = 1e4, time_ratio: float = 100.0,
                        min_layers: int = 4, min_steps: int = 4, min_growth: float = 1.05,
                        cooldown: int = 100, zero_patience: int = 3) -> Detector:
    """Detector of backward signals that grow or shrink geometrically with depth or time.

    Three signals, each giving its own event on onset (and again after it clears):

    * **depth** -- ``out_grad_rms`` of the weight layers in forward order (the gradient with
      respect to each layer's output, per entry): alarm when the fitted input-side /
      output-side ratio is ``>= ratio`` (exploding) or ``<= 1/ratio`` (vanishing), the
      per-layer factor is beyond ``min_growth`` and the unfitted end thirds agree.
    * **parameter gradients** -- the same fit on per-entry weight-gradient norms, with the
      stricter ``param_ratio`` (weight gradients also carry the forward activations, which
      partly cancel the trend), only at steps without output gradients.
    * **time** -- for each recurrent layer, the gradient reaching each time step
      (``time_grad``), time step 0 being the input side: threshold ``time_ratio``.
    * **zero** -- the input-side weight layers get a gradient of exactly 0 while a later one
      gets a positive one, for ``zero_patience`` measured steps in a row: nothing reaches them
      (dead ReLU units where the activation is functional, so that no unit statistic exists --
      with ReLU modules ``dead_units`` reports them -- or underflow). A trend cannot be fitted
      through zeros, so this is its own signal, reported as ``vanishing``. Layers without a
      gradient (frozen, unused) are not zeros.

    Args:
        ratio, param_ratio, time_ratio: end-to-end thresholds (> 1).
        min_layers / min_steps: fewest measured layers / time steps for a verdict.
        min_growth: the per-layer (per-step) factor must exceed this (or its inverse).
        zero_patience: consecutive measured steps of exactly-zero input-side gradients.
        cooldown: steps during which a condition that cleared and came back is not reported
            again (trends measured on small batches flicker around the threshold).
    """

    def init():
        return {}

    cache: dict[str, Any] = {}

    def rms_divisor(L) -> np.ndarray:
        """``sqrt(n_params)`` per layer (NaN where 0), once per layer table."""
        if cache.get("table") is not L:
            n_par = np.asarray(L.n_params, dtype=float)
            cache["table"], cache["div"] = L, np.sqrt(np.where(n_par > 0, n_par, np.nan))
        return cache["div"]

    def update(stats: StepStats, state: dict):
        new_state = dict(state)
        events: list[Event] = []
        L = stats.layers
        order = L.weight_order

        def handle(key: str, tr: dict | None, verdict: str | None, what: str, event_facts):
            if tr is None:
                return  # keep the state: nothing was measured here
            prev = state.get(key)
            if verdict is None:
                new_state.pop(key, None)
                return
            if prev is not None and prev[0] == verdict:
                return  # still the same condition: no new event
            new_state[key] = (verdict, stats.step)
            last = state.get(("emitted", key, verdict))
            if last is not None and stats.step - last < cooldown:
                return  # the same condition flapped back within the cooldown: not news
            new_state[("emitted", key, verdict)] = stats.step
            # the two depth signals describe one condition: report it once
            twin = {"depth": "param_depth", "param_depth": "depth"}.get(key)
            if twin is not None and state.get(twin, (None,))[0] == verdict:
                return
            worst, extra = event_facts()     # built only for an event
            tr = _fitted(tr)
            ev = dict(stats.info or {})
            ev.update({"growth_per_layer": tr["growth_per_layer"], "gsc": tr["gsc"], "ends_ratio": tr["ends_ratio"],
                       "depth": tr["n"], "signal": what, "worst_layer": worst, "lr": stats.lr})
            ev.update(extra)
            sev, message = _describe(verdict, what, tr, worst, stats.step)
            events.append(Event(step=stats.step, kind=verdict, layer=worst, severity=sev,
                                message=message, evidence=ev, remedy="", since=stats.step))

        # 1) depth trend of the backward signal
        vals = stats.out_grad_rms[order] if order.size else np.zeros(0)
        tr, verdict = _trend_verdict(vals, min_layers, ratio, min_growth)
        if tr is not None:
            p = tr["positions"]
            handle("depth", tr, verdict, "out_grad",
                   lambda: (L.names[order[p[0]]], {"series": [float(x) for x in vals[p]],
                                                    "series_layers": [L.names[order[q]] for q in p]}))
        else:
            # 2) fallback: per-entry weight-gradient norms
            with np.errstate(divide="ignore", invalid="ignore"):
                rms = stats.grad_norm / rms_divisor(L)
            pvals = rms[order] if order.size else np.zeros(0)
            trp, verdict = _trend_verdict(pvals, min_layers, param_ratio, min_growth)
            if trp is not None:
                pp = trp["positions"]
                handle("param_depth", trp, verdict, "param_grad",
                       lambda: (L.names[order[pp[0]]], {"series": [float(x) for x in pvals[pp]]}))

        # 4) exactly zero gradients on the input side
        _zero_signal(stats, state, new_state, events, order, zero_patience, cooldown)

        # 3) per-time-step trends of recurrent layers
        for name, series in (stats.time_grad or {}).items():
            s = np.asarray(series, dtype=float)
            trt, verdict = _trend_verdict(s, min_steps, time_ratio, min_growth)
            handle(f"time:{name}", trt, verdict, "time",
                   lambda name=name, s=s: (name, _time_facts(L, name, s)))
        return events, new_state

    verdicts = functools.partial(_batch_verdicts, divisor=rms_divisor, min_layers=min_layers,
                                 param_ratio=param_ratio, min_growth=min_growth)

    return Detector(init, update, "exploding_vanishing", functools.partial(_many, update, verdicts))


def _many(update, verdicts, stats_seq, state) -> tuple[list[list[Event]], dict]:
    """:func:`exploding_vanishing`'s ``update_many``: ``update`` only on the steps whose
    verdict :func:`_batch_verdicts` could not decide or that change the condition held."""
    out: list[list[Event]] = []
    for st, v in zip(stats_seq, verdicts(stats_seq) if stats_seq else ()):
        if v == "" or (v is not None and state.get("param_depth", (None,))[0] == v):
            state = _cleared(st, state, keep_depth=bool(v))   # nothing new: no fit, no event
            out.append([])
        else:
            ev, state = update(st, state)
            out.append(ev)
    return out, state


def _batch_verdicts(stats_seq, divisor, min_layers: int, param_ratio: float,
                    min_growth: float) -> list[str | None]:
    """The parameter-gradient depth verdict of each step, vectorised over the steps, where
    :func:`exploding_vanishing`'s update would take that path and decide it clear of every
    threshold: ``""`` (no verdict), ``"exploding"`` or ``"vanishing"``; None where the update
    must run (output gradients or time series measured, a weight layer without a finite
    positive gradient, a structure change in the batch, a ratio or a slope within a margin of
    its threshold: these row-wise numbers need not match :func:`_trend_verdict`'s to the last
    bit). ``divisor(table)``: ``sqrt(n_params)`` per layer."""
    K = len(stats_seq)
    none: list[str | None] = [None] * K
    L = stats_seq[0].layers
    order = L.weight_order
    n = order.size
    G = same_table_rows(stats_seq, "grad_norm")
    if G is None or n < max(min_layers, 2) or not (param_ratio > 1 and min_growth > 0):
        return none
    O = np.array([s.out_grad_rms for s in stats_seq])[:, order]   # (one table: checked above)
    with np.errstate(divide="ignore", invalid="ignore"):
        P = (G / divisor(L))[:, order]
        ok = ((O > 0) & (O < math.inf)).sum(axis=1) < max(min_layers, 2)   # (NaN compares False)
        ok &= ((P > 0) & (P < math.inf)).all(axis=1)
        if not ok.any() or any(s.time_grad for s in stats_seq):
            return none
        Y = np.log10(P)
    k = max(1, n // 3)
    ends = 10.0 ** (_row_medians(Y[:, :k]) - _row_medians(Y[:, -k:]))
    root = math.sqrt(param_ratio)
    lo, hi = root * (1 - 1e-9), root * (1 + 1e-9)
    out = [("" if q else None) for q in (ok & (ends < lo) & (ends > 1.0 / lo)).tolist()]
    up, down = ok & (ends >= hi), ok & (ends <= 1.0 / hi)
    rows = np.flatnonzero(up | down)
    if rows.size:
        i, j, dx = pairs(n)
        Yr = Y[rows]
        slopes = (Yr[:, j] - Yr[:, i]) / dx
        c_up = min(-math.log10(param_ratio) / (n - 1), -math.log10(min_growth))
        c_down = max(math.log10(param_ratio) / (n - 1), math.log10(min_growth))
        c = np.where(up[rows], c_up, c_down)
        m = 1e-9 * (1.0 + np.abs(c))
        h = slopes.shape[1] // 2
        below = (slopes <= (c - m)[:, None]).sum(axis=1) >= h + 1     # the fitted slope b < c
        above = slopes.shape[1] - (slopes < (c + m)[:, None]).sum(axis=1) >= h + 1   # b > c
        for r, u, b, a in zip(rows.tolist(), up[rows].tolist(), below.tolist(), above.tolist()):
            if b or a:
                out[r] = ("exploding" if b else "") if u else ("vanishing" if a else "")
    return out


def _row_medians(a: np.ndarray) -> np.ndarray:
    """The median of each row (as ``np.median(a, axis=1)``, by one sort: several times cheaper
    on the few short rows of a batch)."""
    s = np.sort(a, axis=1)
    h = s.shape[1] // 2
    return s[:, h] if s.shape[1] % 2 else (s[:, h - 1] + s[:, h]) / 2


def _cleared(stats: StepStats, state: dict, keep_depth: bool = False) -> dict:
    """What :func:`exploding_vanishing`'s update leaves of ``state`` on a step whose verdict
    :func:`_batch_verdicts` decided: the ``param_depth`` signal cleared (no verdict) or kept
    (``keep_depth``: the verdict it holds), and the ``zero`` signal cleared (every weight layer
    had a positive gradient) unless ReLU modules measure dead units instead."""
    drop: tuple[str, ...] = () if keep_depth else ("param_depth",)
    if "relu" not in stats.layers.families:
        drop += ("zero",)
    if not any(k in state for k in drop):
        return state
    return {k: v for k, v in state.items() if k not in drop}


def _zero_prefix(grad_norm: np.ndarray, order: np.ndarray) -> int | None:
    """How many weight layers, in forward order, lead with a gradient norm of exactly 0 before
    the first positive one (layers without a measurement, NaN, are skipped). None when nothing
    positive was measured (no signal to compare with) or a non-finite value comes first."""
    v = grad_norm[order] if order.size else np.zeros(0)
    v = v[~np.isnan(v)]
    pos = np.flatnonzero(v != 0)
    if not pos.size or not np.isfinite(v[pos[0]]) or v[pos[0]] < 0:
        return None
    return int(pos[0])


def _zero_signal(stats: StepStats, state: dict, new_state: dict, events: list, order: np.ndarray,
                 patience: int, cooldown: int) -> None:
    """The ``zero`` signal of :func:`exploding_vanishing` (its docstring): counts consecutive
    measured steps with a zero prefix; one ``vanishing`` event when the count reaches
    ``patience`` (again only after it cleared and ``cooldown`` steps passed)."""
    if stats.grad_norm is None or "relu" in stats.layers.families:
        return          # ReLU modules: the dead_units detector measures the units themselves
    k = _zero_prefix(stats.grad_norm, order)
    if k is None:
        return                                   # not measured: keep the count
    if k == 0:
        new_state.pop("zero", None)
        return
    count, since = state.get("zero", (0, stats.step))
    count += 1
    new_state["zero"] = (count, since)
    last = state.get(("emitted", "zero"))
    if count != patience or (last is not None and stats.step - last < cooldown):
        return
    new_state[("emitted", "zero")] = stats.step
    L = stats.layers
    names = [L.names[i] for i in order if not np.isnan(stats.grad_norm[i])][:k]
    ev = dict(stats.info or {})
    ev.update({"signal": "zero", "zero_layers": names, "worst_layer": names[0], "depth": len(order),
               "lr": stats.lr, "patience": patience})
    where = safe_text(names[0]) if k == 1 else f"{safe_text(names[0])} .. {safe_text(names[-1])}"
    msg = (f"The gradient of the first {k} weight layer(s) ({where}) is exactly 0 for {patience} "
           f"measured steps up to step {stats.step}, while later layers get one: no backward "
           "signal reaches them (dead ReLU units, or underflow).")
    events.append(Event(step=stats.step, kind="vanishing", layer=names[0], severity="error",
                        message=msg, evidence=ev, remedy="", since=since))


def _time_facts(L, name: str, s: np.ndarray) -> dict:
    """Evidence of a through-time trend: the sequence length is the depth the remedies use
    (chrono init spans it), and the cell type (``LSTM``, ``GRU``, ``RNN``) picks them."""
    i = L.position.get(name)
    facts = {"is_recurrent": True, "time_steps": int(len(s)), "depth": int(len(s)),
             "series": [float(x) for x in s]}
    if i is not None:
        facts["cell"] = L.types[i]
    return facts


def update_ratio(*, collapse: float = 1e-3, max_ratio: float = 1.0, patience: int = 2) -> Detector:
    """Detector of weight layers whose update-to-weight ratio collapses or explodes.

    ``update_ratio = ||W_after - W_before|| / ||W_before||`` (Karpathy's "update:data ratio";
    healthy SGD/Adam training sits around 1e-4..1e-2). A layer is *collapsed* when its
    ratio is below ``collapse`` times the median ratio of the weight layers -- it has
    effectively stopped learning while the others move -- for ``patience`` consecutive
    measurements. A ratio above ``max_ratio`` (the update is as large as the weights) is
    reported at once. One event per condition and step, naming the worst layer and listing
    the others in the evidence.

    Args:
        collapse: relative threshold (fraction of the median ratio).
        max_ratio: absolute upper threshold.
        patience: consecutive measured steps before a collapse is reported.
    """

    def init():
        return {"count": {}, "active": frozenset()}

    def update(stats: StepStats, state: dict):
        L = stats.layers
        weight = L.is_weight()
        r = stats.update_ratio
        ok = weight & np.isfinite(r) & (r >= 0)
        if ok.sum() < 2 or stats.skipped:
            return [], state
        med = float(np.median(r[ok]))
        counts = dict(state["count"])
        active = set(state["active"])
        new_cond: dict[str, list[int]] = {"collapse": [], "explode": []}
        for i in np.flatnonzero(ok):
            name = L.names[i]
            low = med > 0 and r[i] < collapse * med
            n_prev, first = counts.get(name, (0, stats.step))
            counts[name] = (n_prev + 1, first if n_prev else stats.step) if low else (0, stats.step)
            cond = "collapse" if counts[name][0] >= patience else ("explode" if r[i] > max_ratio else None)
            if cond is None:
                active = {a for a in active if a[0] != name}
                continue
            if (name, cond) in active:
                continue
            active = {a for a in active if a[0] != name} | {(name, cond)}
            new_cond[cond].append(int(i))
        events: list[Event] = []
        info = dict(stats.info or {})
        for cond, idx in new_cond.items():
            if not idx:
                continue
            worst = min(idx, key=lambda j: r[j]) if cond == "collapse" else max(idx, key=lambda j: r[j])
            name = L.names[worst]
            names = [L.names[j] for j in L.forward_order(np.isin(np.arange(len(L)), idx))]
            ev = dict(info)
            ev.update({"update_ratio": float(r[worst]), "median": med, "worst_layer": name,
                       "layers": names, "n_layers": len(names), "lr": stats.lr,
                       "grad_norm": float(stats.grad_norm[worst])})
            others = f" ({len(names) - 1} more layers likewise)" if len(names) > 1 else ""
            if cond == "collapse":
                below = f"{_fmt(med / r[worst])}x" if r[worst] > 0 else "infinitely far"
                msg = (f"Layer {quoted(name)} has stopped learning: its update/weight ratio "
                       f"{_fmt(r[worst])} is {below} below the median of the weight layers "
                       f"({_fmt(med)}) at step {stats.step}{others}.")
                since = counts[name][1]
            else:
                msg = (f"Layer {quoted(name)} moved by {_fmt(r[worst])}x its own norm in one step "
                       f"at step {stats.step} (update/weight ratio > {max_ratio}){others}.")
                since = stats.step
            events.append(Event(step=stats.step, kind="update_ratio", layer=name,
                                severity="warning", message=msg, evidence=ev, since=since))
        return events, {"count": counts, "active": frozenset(active)}

    def quiet(stats_seq) -> np.ndarray:
        """Skipped steps, and steps with fewer than two measured weight-layer ratios."""
        R = same_table_rows(stats_seq, "update_ratio")
        if R is None:
            return np.zeros(len(stats_seq), dtype=bool)
        with np.errstate(invalid="ignore"):
            cnt = (stats_seq[0].layers.is_weight() & np.isfinite(R) & (R >= 0)).sum(axis=1)
        return (cnt < 2) | np.fromiter((s.skipped for s in stats_seq), dtype=bool, count=len(stats_seq))

    return with_quiet(Detector(init, update, "update_ratio"), quiet)
