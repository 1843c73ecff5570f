"""The report's pictures: matplotlib figures of a stored run or a probe result.

Measuring is separate from showing: every function here reads a stored
:class:`~gradhealth.store.Run` (from :func:`~gradhealth.store.load_run`) or a frozen
:class:`~gradhealth.probe.ProbeResult`, never a model. Each figure is
``plot_xxx(run, ax=None) -> Axes`` (a new figure when ``ax`` is None).

What the dashboards hide, these draw: NaN, +Inf, -Inf and exact zeros are marked cells or
points of their own colour and counted in the legend. Large runs are *drawn* downsampled
(at most :data:`MAX_COLS` step columns, :data:`MAX_POINTS` line points), but counts and
events are always taken from every row, and a step column or bin that holds a non-finite
value shows it (NaN wins over Inf over zero inside a bin), so the first NaN step is always
visible; it is also marked with a labelled line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .probe_view import VERDICT_COLOR
from .run_view import is_pathology

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Run

__all__ = ["MAX_COLS", "MAX_POINTS", "CELL_COLORS", "Grid", "layer_grid", "plot_grad_heatmap",
           "plot_loss", "plot_global_norm", "plot_update_ratio", "plot_probe_layers",
           "plot_probe_jacobian", "plot_probe_time", "clip_fraction", "nonfinite_counts"]

#: Most step columns the heatmap draws; more steps are binned (per-bin max, special cells win).
MAX_COLS = 600
#: Most points a line draws; more are binned keeping each bin's min and max (spikes survive).
MAX_POINTS = 2000

#: Cell classes of the heatmap: code -> (label, colour). 0 is a finite positive value.
NAN, POSINF, NEGINF, ZERO, MISSING = 1, 2, 3, 4, 5
CELL_COLORS = {NAN: ("NaN", "#ff00ff"), POSINF: ("+Inf", "#d62728"), NEGINF: ("-Inf", "#ff7f0e"),
               ZERO: ("0 (underflow)", "#000000")}
# Priority when several classes meet in one drawn bin: the worst one is shown.
_PRIORITY = (NAN, POSINF, NEGINF, ZERO)
_EVENT_COLOR = "#e41a1c"
_SKIP_COLOR, _ROLLBACK_COLOR = "#bbbbbb", "#f4a582"


@dataclass
class Grid:
    """A per-layer statistic as a dense matrix (layers in depth order x recorded steps).

    Attributes:
        names: layer names, one per row, in depth (index) order.
        types: the layers' class names.
        steps: the recorded steps (int64 array), one per column, ascending.
        values: float64 matrix; NaN where the value is NaN *or* not recorded (see ``kind``).
        kind: int8 matrix of cell classes: 0 finite positive, :data:`NAN`, :data:`POSINF`,
            :data:`NEGINF`, :data:`ZERO` (also negative), :data:`MISSING` (not recorded).
    """

    names: list
    types: list
    steps: object
    values: object
    kind: object


def _classify(values, recorded):
    import numpy as np

    kind = np.zeros(values.shape, dtype=np.int8)
    kind[np.isnan(values)] = NAN
    kind[np.isposinf(values)] = POSINF
    kind[np.isneginf(values)] = NEGINF
    kind[np.isfinite(values) & (values <= 0)] = ZERO
    kind[~recorded] = MISSING
    return kind


def layer_grid(run: "Run", field: str = "grad_norm") -> Grid:
    """The per-layer statistic ``field`` of a run as a :class:`Grid`, from every row.

    Only layers with at least one recorded value get a row (activation modules have no
    gradient norm), so the picture is the weight layers in depth order.
    """
    import numpy as np

    cols = run.layer_columns((field,))
    rec = cols.recorded[field]
    st, li, val = cols.step[rec], cols.layer[rec], cols.values[field][rec]
    has = set(np.unique(li).tolist())
    layers = [d for d in run.layers if d["index"] in has]
    steps = np.unique(st)
    values = np.full((len(layers), len(steps)), np.nan)
    recorded = np.zeros(values.shape, dtype=bool)
    if st.size:
        pos = np.full(int(max(max(has), max((d["index"] for d in layers), default=0))) + 1, -1, dtype=np.int64)
        pos[[d["index"] for d in layers]] = np.arange(len(layers))
        keep = (li >= 0) & (li < pos.size)
        r = pos[li[keep]]
        ok = r >= 0
        c = np.searchsorted(steps, st[keep][ok])
        values[r[ok], c] = val[keep][ok]
        recorded[r[ok], c] = True
    return Grid([d["name"] for d in layers], [d["type"] for d in layers], steps, values,
                _classify(values, recorded))


def nonfinite_counts(kind) -> dict:
    """Cells of each special class in a :class:`Grid` ``kind`` matrix: ``{label: count}``."""
    import numpy as np

    return {CELL_COLORS[k][0]: int(np.count_nonzero(kind == k)) for k in _PRIORITY}


def _bin_edges(n: int, most: int):
    import numpy as np

    if n <= most:
        return np.arange(n + 1)
    return np.unique(np.linspace(0, n, most + 1).round().astype(np.int64))


def _bin_columns(values, kind, most: int):
    """Bin columns to at most ``most``: per bin the max finite log value and the worst class."""
    import numpy as np

    edges = _bin_edges(kind.shape[1], most)
    if len(edges) - 1 == kind.shape[1]:
        return values, kind, edges
    with np.errstate(all="ignore"):
        logv = np.where(kind == 0, np.log10(np.where(kind == 0, values, 1.0)), -np.inf)
    v = np.maximum.reduceat(logv, edges[:-1], axis=1)
    v[np.isneginf(v)] = np.nan
    out_kind = np.full(v.shape, MISSING, dtype=np.int8)
    out_kind[np.isfinite(v)] = 0
    for k in reversed(_PRIORITY):  # lowest priority first; the worst class is written last
        hit = np.maximum.reduceat((kind == k).astype(np.int8), edges[:-1], axis=1) > 0
        out_kind[hit] = k
    return 10.0 ** v, out_kind, edges


def _mpl(text) -> str:
    """A user string (layer name) safe for a matplotlib label: control and bidi characters
    shown as escapes, and ``$`` escaped so that mathtext never parses it."""
    from .._text import safe_text

    return ("-" if text is None else safe_text(text)).replace("$", r"\$")


def _new_ax(ax, size=(9, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size, constrained_layout=True)
    return ax


def _first_nonfinite_step(run: "Run"):
    """The first step at which anything was non-finite: loss, a norm or a layer's gradient."""
    cands = []
    for s in run.steps:
        vals = (s.get("loss"), s.get("global_grad_norm"))
        if any(isinstance(v, float) and not math.isfinite(v) for v in vals) or (s.get("nonfinite_count") or 0) > 0:
            cands.append(s["step"])
            break
    bad = nonfinite_layer_rows(run)
    if bad is not None and bad.any():
        cands.append(int(run.layer_columns().step[bad].min()))
    return min(cands) if cands else None


def nonfinite_layer_rows(run: "Run"):
    """Bool array over the per-layer rows (:meth:`~gradhealth.store.Run.layer_columns`): the
    layer's gradient was non-finite (norm NaN/Inf, or a NaN/Inf count above 0); None when
    the run has no gradient norms."""
    import numpy as np

    cols = run.layer_columns()
    if "grad_norm" not in cols.values:
        return None
    g, rec = cols.values["grad_norm"], cols.recorded["grad_norm"]
    bad = rec & ~np.isfinite(g)
    if "nonfinite" in cols.values:
        with np.errstate(invalid="ignore"):
            bad |= cols.recorded["nonfinite"] & (np.nan_to_num(cols.values["nonfinite"]) > 0)
    return bad


def _mark_first_nonfinite(run, ax, to_x=lambda s: s) -> None:
    s = _first_nonfinite_step(run)
    if s is None:
        return
    x = to_x(s)
    ax.axvline(x, color=CELL_COLORS[NAN][1], lw=1.2, ls="--", zorder=5)
    ax.annotate(f"first non-finite: step {s}", (x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(3, -10), textcoords="offset points", fontsize=7,
                color=CELL_COLORS[NAN][1], zorder=6)


def plot_grad_heatmap(run: "Run", ax=None, field: str = "grad_norm"):
    """Gradient flow: layers in depth order (input at top) x steps, colour = log10 norm.

    NaN, +Inf, -Inf and exact zeros are cells of their own colour, counted in the legend
    (the counts are over every recorded cell, not the drawn bins). Events are overlaid: an
    ``x`` on the layer's row, or a vertical tick at the top for model-wide events.

    Args:
        run: a stored run.
        ax: the Axes to draw on (a new figure when None).
        field: the per-layer statistic (``"grad_norm"``, ``"out_grad_norm"``, ...).
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ax = _new_ax(ax, (9, max(2.5, min(8.0, 0.9 + 0.22 * max(1, len(run.layers))))))
    g = layer_grid(run, field)
    if not g.names or g.steps.size == 0:
        ax.text(0.5, 0.5, f"no per-layer {field} recorded", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    counts = nonfinite_counts(g.kind)
    values, kind, edges = _bin_columns(g.values, g.kind, MAX_COLS)
    ncol = kind.shape[1]
    with np.errstate(all="ignore"):
        logv = np.where(kind == 0, np.log10(np.where(kind == 0, values, 1.0)), np.nan)
    im = ax.imshow(np.ma.masked_invalid(logv), aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(-0.5, ncol - 0.5, len(g.names) - 0.5, -0.5))
    special = np.zeros(kind.shape, dtype=np.int8)
    for k in _PRIORITY:
        special[kind == k] = k
    special[kind == MISSING] = MISSING
    colors = ["#00000000"] + [CELL_COLORS[k][1] for k in _PRIORITY] + ["#eeeeee"]
    ax.imshow(special, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=5.5,
              interpolation="nearest", extent=(-0.5, ncol - 0.5, len(g.names) - 0.5, -0.5))
    ax.figure.colorbar(im, ax=ax, label=f"log10 {field}", shrink=0.9, pad=0.01)
    col_of = _step_to_col(g.steps, edges)
    _overlay_events(run, ax, g.names, col_of)
    _mark_first_nonfinite(run, ax, col_of)
    n = len(g.names)
    if n <= 40:
        labels = [_mpl(f"{nm} ({t})" if t else nm) for nm, t in zip(g.names, g.types)]
        ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_ylabel("layer (depth order, input at top)")
    ticks = np.linspace(0, ncol - 1, min(ncol, 8)).round().astype(int)
    ax.set_xticks(ticks, [str(int(g.steps[edges[t]])) for t in ticks])
    ax.set_xlabel("step" + (f" (binned: {len(g.steps)} steps in {ncol} columns)" if ncol < len(g.steps) else ""))
    handles = [Patch(color=CELL_COLORS[k][1], label=f"{CELL_COLORS[k][0]}: {counts[CELL_COLORS[k][0]]} cells")
               for k in _PRIORITY]
    handles.append(Patch(facecolor="#eeeeee", edgecolor="#999999", label="not recorded"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=5,
              frameon=False)
    ax.set_title(f"gradient flow: {field} per layer and step", fontsize=10)
    return ax


def _step_to_col(steps, edges):
    import numpy as np

    def col(s):
        i = int(np.searchsorted(steps, s, side="right")) - 1
        i = min(max(i, 0), len(steps) - 1)
        return int(np.searchsorted(edges, i, side="right")) - 1

    return col


def _overlay_events(run, ax, names, col_of) -> None:
    rows = {n: i for i, n in enumerate(names)}
    xs, ys, tops = [], [], []
    for e in run.events:
        if e.step is None or not is_pathology(e):
            continue
        y = rows.get(e.layer)
        if y is None:
            tops.append(col_of(e.step))
        else:
            xs.append(col_of(e.step))
            ys.append(y)
    if xs:
        ax.scatter(xs, ys, marker="x", color=_EVENT_COLOR, s=40, linewidths=1.6, zorder=6,
                   label="event")
    if tops:
        ax.scatter(tops, [-0.5] * len(tops), marker="v", color=_EVENT_COLOR, s=40, zorder=6,
                   clip_on=False)


# ------------------------------------------------------------------------------------------
# lines over steps
# ------------------------------------------------------------------------------------------
def _downsample(xs, ys, most: int = MAX_POINTS):
    """Finite positive points binned to at most ``most``, keeping each bin's min and max."""
    import numpy as np

    if xs.size <= most:
        return xs, ys
    edges = _bin_edges(xs.size, most // 2)
    keep = []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = ys[a:b]
        keep += sorted({a + int(np.argmin(seg)), a + int(np.argmax(seg))})
    keep = np.array(keep)
    return xs[keep], ys[keep]


def _special_points(ax, xs, ys, color, label):
    """Mark NaN/+Inf at the top edge, -Inf/0 at the bottom edge; return ``{label: count}``."""
    import numpy as np

    counts = {}
    for name, mask, top, marker in (
            ("NaN", np.isnan(ys), True, "X"), ("+Inf", np.isposinf(ys), True, "^"),
            ("-Inf", np.isneginf(ys), False, "v"), ("0", np.isfinite(ys) & (ys <= 0), False, "v")):
        n = int(np.count_nonzero(mask))
        if not n:
            continue
        counts[name] = n
        x = np.unique(xs[mask])
        if x.size > MAX_POINTS:  # drawing only; the first one always stays
            x = np.unique(np.concatenate([x[:1], x[:: max(1, x.size // MAX_POINTS)]]))
        ax.scatter(x, [1.0 if top else 0.0] * x.size, transform=ax.get_xaxis_transform(),
                   marker=marker, s=45, color=CELL_COLORS[NAN][1] if name == "NaN" else color,
                   edgecolors="black", linewidths=0.4, zorder=6, clip_on=False,
                   label=f"{label} {name}: {n} step(s)")
    return counts


def _line(ax, run, field, color, label, style="-"):
    import numpy as np

    s, v = run.step_series(field)
    good = np.isfinite(v) & (v > 0)
    xs, ys = _downsample(s[good], v[good])
    if xs.size:
        ax.plot(xs, ys, style, color=color, lw=1.1, label=label, zorder=3)
    return _special_points(ax, s, v, color, label)


def _shade_skipped(run, ax) -> dict:
    """Shade skipped steps (grey) and rolled-back stretches (orange); return their counts."""
    skipped = [s["step"] for s in run.steps if s.get("skipped")]
    for a, b in _runs_of(skipped):
        ax.axvspan(a - 0.5, b + 0.5, color=_SKIP_COLOR, alpha=0.5, lw=0, zorder=1)
    rollbacks = 0
    for e in run.events:
        ev = e.evidence or {}
        if e.kind == "guard" and ev.get("action") == "rollback" and e.step is not None:
            rollbacks += 1
            to = ev.get("to_step")
            a = to if isinstance(to, (int, float)) and to <= e.step else e.step
            ax.axvspan(a - 0.5, e.step + 0.5, color=_ROLLBACK_COLOR, alpha=0.35, lw=0, zorder=1)
    return {"skipped": len(skipped), "rollbacks": rollbacks}


def _runs_of(steps):
    """Contiguous stretches ``(first, last)`` of sorted integer steps."""
    out = []
    for s in steps:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [tuple(r) for r in out]


def _mark_events(run, ax) -> int:
    n = 0
    for e in run.events:
        if e.step is not None and is_pathology(e):
            ax.axvline(e.step, color=_EVENT_COLOR, lw=0.8, alpha=0.5, zorder=2)
            n += 1
    return n


def _finish_lines(ax, sk, nev, extra_handles=()):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if nev:
        handles.append(Line2D([], [], color=_EVENT_COLOR, lw=0.8))
        labels.append(f"event ({nev})")
    if sk["skipped"]:
        handles.append(Patch(color=_SKIP_COLOR))
        labels.append(f"skipped step ({sk['skipped']})")
    if sk["rollbacks"]:
        handles.append(Patch(color=_ROLLBACK_COLOR))
        labels.append(f"rolled back ({sk['rollbacks']})")
    for h, lab in extra_handles:
        handles.append(h)
        labels.append(lab)
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_xlabel("step")


def plot_loss(run: "Run", ax=None):
    """The observed loss over steps (log scale), events marked, skipped steps shaded;
    non-finite losses are marked at the top edge and counted in the legend."""
    ax = _new_ax(ax, (9, 3))
    sk = _shade_skipped(run, ax)
    _line(ax, run, "loss", "#1f77b4", "loss")
    _mark_first_nonfinite(run, ax)
    _finish_lines(ax, sk, _mark_events(run, ax))
    ax.set_ylabel("loss")
    ax.set_title("loss", fontsize=10)
    return ax


def clip_fraction(run: "Run") -> tuple[int, int]:
    """``(clipped, measured)``: steps whose applied norm is below the pre-clip norm, out of
    the steps with a finite pre-clip norm."""
    clipped = measured = 0
    for s in run.steps:
        pre, post = s.get("global_grad_norm"), s.get("global_grad_norm_clipped")
        if pre is None or not math.isfinite(pre):
            continue
        measured += 1
        if post is not None and math.isfinite(post) and post < pre * (1 - 1e-6):
            clipped += 1
    return clipped, measured


def plot_global_norm(run: "Run", ax=None):
    """Global gradient norm before and after clipping ("is my clipping working?"), with
    the fraction of steps clipped in the title, events marked and skipped steps shaded."""
    ax = _new_ax(ax, (9, 3))
    sk = _shade_skipped(run, ax)
    _line(ax, run, "global_grad_norm", "#444444", "pre-clip norm")
    _line(ax, run, "global_grad_norm_clipped", "#2ca02c", "applied (post-clip) norm", "--")
    _mark_first_nonfinite(run, ax)
    _finish_lines(ax, sk, _mark_events(run, ax))
    c, m = clip_fraction(run)
    frac = f"{c} of {m} steps clipped ({100 * c / m:.0f}%)" if m else "no finite norm recorded"
    ax.set_ylabel("global gradient norm")
    ax.set_title(f"global gradient norm: {frac}", fontsize=10)
    return ax


def plot_update_ratio(run: "Run", ax=None):
    """Per-layer update/parameter ratio ``||dθ|| / ||θ||`` over the detail steps, one line per
    weight layer coloured by depth; zeros (a skipped step) and non-finite values marked."""
    import matplotlib
    import numpy as np

    ax = _new_ax(ax, (9, 3))
    sk = _shade_skipped(run, ax)
    g = layer_grid(run, "update_ratio")
    counts: dict = {}
    if not g.names:
        ax.text(0.5, 0.5, "no update ratio recorded", ha="center", va="center", transform=ax.transAxes)
    cmap = matplotlib.colormaps["plasma"]
    n = len(g.names)
    for i, name in enumerate(g.names):
        rec = g.kind[i] != MISSING
        xs, ys = g.steps[rec], g.values[i][rec]
        good = np.isfinite(ys) & (ys > 0)
        dx, dy = _downsample(xs[good], ys[good])
        color = cmap(0.85 * i / max(1, n - 1))
        ax.plot(dx, dy, "-", color=color, lw=1, alpha=0.9, label=_mpl(name) if n <= 8 else None)
        for k in _PRIORITY:
            c = int(np.count_nonzero(g.kind[i] == k))
            if c:
                counts[CELL_COLORS[k][0]] = counts.get(CELL_COLORS[k][0], 0) + c
        bad = rec & ~(np.isfinite(g.values[i]) & (g.values[i] > 0))
        top = bad & (np.isnan(g.values[i]) | np.isposinf(g.values[i]))
        ax.scatter(g.steps[top], [1.0] * int(top.sum()), transform=ax.get_xaxis_transform(),
                   marker="X", color=CELL_COLORS[NAN][1], s=30, zorder=6, clip_on=False)
        low = bad & ~top
        ax.scatter(g.steps[low], [0.0] * int(low.sum()), transform=ax.get_xaxis_transform(),
                   marker="v", color=color, s=25, zorder=6, clip_on=False)
    from matplotlib.lines import Line2D

    extra = [(Line2D([], [], marker="X", ls="", color=CELL_COLORS[NAN][1] if k in ("NaN", "+Inf") else "#555555"),
              f"{k}: {v} value(s)") for k, v in counts.items() if v]
    if n > 8:
        extra.append((Line2D([], [], color=cmap(0.0)), _mpl(f"{g.names[0]} (input side)")))
        extra.append((Line2D([], [], color=cmap(0.85)), _mpl(f"{g.names[-1]} (output side)")))
    _finish_lines(ax, sk, _mark_events(run, ax), extra)
    ax.set_ylabel("update / parameter norm")
    ax.set_title("per-layer update ratio (detail steps)", fontsize=10)
    return ax


# ------------------------------------------------------------------------------------------
# probe
# ------------------------------------------------------------------------------------------
def plot_probe_layers(result, ax=None):
    """Per-layer backward gain, GSC and parameter gradient by depth, dots in verdict
    colours, NaN/Inf/0 marked at the edges (:func:`gradhealth.report.probe_view.plot`)."""
    from .probe_view import plot

    ax = _new_ax(ax, (9, 4))
    plot(result, ax=ax, what="layers")
    # the names are user data: no mathtext, no control characters
    ax.set_xticks(ax.get_xticks(), [_mpl(t.get_text()) for t in ax.get_xticklabels()])
    ax.set_title(_mpl(ax.get_title()), color=ax.title.get_color())
    counts = {}
    for lr in result.layers:
        for v in (lr.gain, lr.gsc, lr.grad_norm):
            if v is None:
                continue
            lab = ("NaN" if math.isnan(v) else "+Inf" if v == math.inf else "-Inf" if v == -math.inf
                   else "0" if v <= 0 else None)
            if lab:
                counts[lab] = counts.get(lab, 0) + 1
    if counts:
        ax.set_title(ax.get_title() + "; non-finite/zero values: "
                     + ", ".join(f"{k} {v}" for k, v in counts.items()), fontsize=9,
                     color=VERDICT_COLOR.get(result.verdict, "black"))
    return ax


def plot_probe_time(result, ax=None):
    """Gradient per time step of each recurrent layer (time is depth)."""
    from .probe_view import plot

    ax = _new_ax(ax, (9, 4))
    plot(result, ax=ax, what="time")
    ax.set_title(_mpl(ax.get_title()), color=ax.title.get_color())
    leg = ax.get_legend()
    for t in leg.get_texts() if leg is not None else ():
        t.set_text(_mpl(t.get_text()))
    return ax


def plot_probe_jacobian(result, ax=None):
    """Top singular values of the input-output Jacobian (log scale) against their root
    mean square; an isometry has every value near the rms (Pennington et al. 2017)."""
    ax = _new_ax(ax, (6, 3))
    j = result.jacobian
    if j is None:
        ax.text(0.5, 0.5, "Jacobian spectrum not measured", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    vals = [float(v) for v in j.top]
    good = [(i + 1, v) for i, v in enumerate(vals) if math.isfinite(v) and v > 0]
    if good:
        ax.plot([g[0] for g in good], [g[1] for g in good], "o-", color="#1f77b4",
                label="singular value")
    if j.rms is not None and math.isfinite(j.rms) and j.rms > 0:
        ax.axhline(j.rms, color="#7f7f7f", ls="--", label=f"rms {j.rms:.3g}")
    bad = [i + 1 for i, v in enumerate(vals) if not (math.isfinite(v) and v > 0)]
    if bad:
        ax.scatter(bad, [1.0] * len(bad), transform=ax.get_xaxis_transform(), marker="X",
                   color=CELL_COLORS[NAN][1], s=50, clip_on=False,
                   label=f"non-finite/zero: {len(bad)}")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("singular value")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(_mpl(f"input-output Jacobian (w.r.t. {j.wrt}): spread top/rms {j.spread:.3g}"),
                 fontsize=10)
    return ax
