"""More report pictures: per-time-step gradients of a watched run's recurrent layers, a probe's
measured gains against the mean-field prediction, and a cure's before/after probes.

As in :mod:`gradhealth.report.figures`: each reads a stored run or frozen probe results, never
a model; NaN, +Inf, -Inf and exact zeros are marked points, counted in the legend.
"""

from __future__ import annotations

import math

from .figures import CELL_COLORS, NAN, _mpl, _new_ax
from .probe_view import VERDICT_COLOR

__all__ = ["MAX_SERIES", "recurrent_layers", "plot_time_grads", "meanfield_prediction",
           "plot_probe_meanfield", "plot_cure"]

#: Most detail steps one time-series figure draws as lines (the first, the last and the first
#: non-finite one always among them); the counts cover every stored series.
MAX_SERIES = 12


def recurrent_layers(run) -> list[tuple[int, str]]:
    """``(index, name)`` of the layers with stored per-time-step gradients, in index order."""
    names = run.layer_names
    return [(i, names.get(i, f"layer {i}")) for i in sorted({r["layer"] for r in run.time_grads})]


def _count_special(ys, counts: dict) -> None:
    import numpy as np

    for name, n in (("NaN", np.isnan(ys).sum()), ("+Inf", np.isposinf(ys).sum()),
                    ("-Inf", np.isneginf(ys).sum()), ("0", (np.isfinite(ys) & (ys <= 0)).sum())):
        if n:
            counts[name] = counts.get(name, 0) + int(n)


def _mark_special(ax, xs, ys, color) -> None:
    import numpy as np

    top = np.isnan(ys) | np.isposinf(ys)
    low = ~np.isfinite(ys) & ~top | (np.isfinite(ys) & (ys <= 0))
    if top.any():
        ax.scatter(xs[top], [1.0] * int(top.sum()), transform=ax.get_xaxis_transform(), marker="X",
                   s=40, color=CELL_COLORS[NAN][1], edgecolors="black", linewidths=0.4, zorder=6, clip_on=False)
    if low.any():
        ax.scatter(xs[low], [0.0] * int(low.sum()), transform=ax.get_xaxis_transform(), marker="v",
                   s=35, color=color, edgecolors="black", linewidths=0.4, zorder=6, clip_on=False)


def plot_time_grads(run, layer, ax=None):
    """Gradient norm reaching each time step of a recurrent layer (log scale), one line per
    stored detail step coloured from early (dark) to late (yellow).

    Args:
        run: a stored run (``Run.time_grads``, schema version 2).
        layer: the recurrent layer's name or index.
        ax: the Axes (a new figure when None).
    """
    import matplotlib
    import numpy as np
    from matplotlib.lines import Line2D

    ax = _new_ax(ax, (9, 3.2))
    steps, norms = run.time_series(layer)
    name = layer if isinstance(layer, str) else run.layer_names.get(layer, str(layer))
    if not steps.size:
        ax.text(0.5, 0.5, "no per-time-step gradient recorded for this layer", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    counts: dict = {}
    bad_at = None
    for s, ys in zip(steps.tolist(), norms):
        _count_special(ys, counts)
        if bad_at is None and not (np.isfinite(ys) & (ys > 0)).all():
            bad_at = s
    pick = set(np.unique(np.linspace(0, steps.size - 1, min(MAX_SERIES, steps.size)).round().astype(int)).tolist())
    if bad_at is not None:
        pick.add(int(np.flatnonzero(steps == bad_at)[0]))
    cmap = matplotlib.colormaps["viridis"]
    for k in sorted(pick):
        ys = norms[k]
        xs = np.arange(ys.size)
        color = cmap(0.9 * k / max(1, steps.size - 1))
        good = np.isfinite(ys) & (ys > 0)
        ax.plot(xs[good], ys[good], "-", color=color, lw=1.2, zorder=3)
        _mark_special(ax, xs, ys, color)
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=cmap(0.0)), Line2D([], [], color=cmap(0.9))]
    labels = [f"step {int(steps[0])}", f"step {int(steps[-1])}"]
    for lab, n in counts.items():
        handles.append(Line2D([], [], marker="X" if lab in ("NaN", "+Inf") else "v", ls="",
                              color=CELL_COLORS[NAN][1] if lab in ("NaN", "+Inf") else "#555555"))
        labels.append(f"{lab}: {n} point(s)")
    if bad_at is not None:
        handles.append(Line2D([], [], color="none"))
        labels.append(f"first non-finite/zero: step {bad_at}")
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_xlabel("time step (0 = first input; the loss sees the last ones directly)")
    ax.set_ylabel("||dL/dx_t||")
    shown = f"{len(pick)} of {steps.size} detail steps" if len(pick) < steps.size else f"{steps.size} detail steps"
    ax.set_title(_mpl(f"gradient per time step of {name} ({shown})"), fontsize=10)
    return ax


def meanfield_prediction(result):
    """The mean-field prediction of the backward gain along the probe's plain stack.

    For a stack of fully connected layers with weight variance ``sigma_w2 / fan_in`` and bias
    variance ``sigma_b2``, the squared gradient norm changes by ``chi_1`` per layer
    (Schoenholz et al. 2017), so the gain of layer ``l`` is ``gain_last * chi_1 **
    ((last - l) / 2)``, anchored at the stack's layer nearest the output.

    Returns:
        ``(positions, predicted gains, None)``, or ``(None, None, why)`` when there is none.
    """
    mf = result.meanfield
    if mf is None:
        return None, None, ("no mean-field prediction: the model has no plain stack of 4 or more "
                            "chained square nn.Linear layers with one elementwise activation")
    if mf.chi_1_theory is None or not math.isfinite(mf.chi_1_theory) or mf.chi_1_theory <= 0:
        return None, None, (f"no mean-field prediction: the theory has no chi_1 for activation "
                            f"{mf.activation!r}")
    names = [lr.name for lr in result.layers]
    try:
        a, b = names.index(mf.layers[0]), names.index(mf.layers[1])
    except ValueError:
        return None, None, "no mean-field prediction: the stack's layers are not in the result"
    anchor = result.layers[b].gain
    if anchor is None or not math.isfinite(anchor) or anchor <= 0:
        return None, None, "no mean-field prediction: the stack's last gain is not finite"
    xs = list(range(a, b + 1))
    return xs, [anchor * mf.chi_1_theory ** ((b - x) / 2) for x in xs], None


def plot_probe_meanfield(result, ax=None):
    """Measured backward gain per layer by depth against the mean-field prediction."""
    from .probe_view import _mark_bad, _series

    ax = _new_ax(ax, (9, 3.6))
    layers = list(result.layers)
    xs = list(range(len(layers)))
    colors = [VERDICT_COLOR.get(lr.verdict, "gray") for lr in layers]
    bad = _series(ax, xs, [lr.gain for lr in layers], colors, "measured backward gain", "-", "#444444")
    px, py, why = meanfield_prediction(result)
    mf = result.meanfield
    if px is not None:
        ax.plot(px, py, "--", color="#ff7f0e", lw=1.6, zorder=4,
                label=_mpl(f"mean field: chi_1 = {mf.chi_1_theory:.3g} per layer ({mf.activation}, "
                           f"sigma_w2 = {mf.sigma_w2:.3g}, sigma_b2 = {mf.sigma_b2:.3g}); "
                           f"measured {mf.chi_1_measured:.3g}"))
    ax.set_yscale("log")
    _mark_bad(ax, bad)
    if bad:
        ax.plot([], [], "X", color="#9400d3", label=f"NaN/Inf/0: {len(bad)} layer(s)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("layer (forward order; input left, output right)")
    ax.set_ylabel("backward gain (log)")
    title = "measured gain against mean-field theory" if why is None else why
    ax.set_title(_mpl(title), fontsize=9 if why else 10)
    return ax


def plot_cure(before, after, ax=None):
    """Backward gain per layer of the model before (red) and after (green) the cure; the
    legend gives each verdict. Layers are matched by name (the cure keeps the names)."""
    from .probe_view import _mark_bad, _series

    ax = _new_ax(ax, (9, 3.6))
    names = [lr.name for lr in before.layers]
    pos = {n: i for i, n in enumerate(names)}
    bad = []
    for res, color, label in ((before, "#d62728", "before"), (after, "#2ca02c", "after")):
        pts = [(pos[lr.name], lr.gain) for lr in res.layers if lr.name in pos]
        bad += _series(ax, [p[0] for p in pts], [p[1] for p in pts], None,
                       f"{label}: {res.verdict}", "-o", color, 20)
    ax.set_yscale("log")
    _mark_bad(ax, bad)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if len(names) <= 24:
        ax.set_xticks(range(len(names)), [_mpl(n) for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("backward gain (log)")
    ax.set_title(_mpl(f"cure: {before.verdict} -> {after.verdict}"), fontsize=10,
                 color=VERDICT_COLOR.get(after.verdict, "black"))
    return ax
