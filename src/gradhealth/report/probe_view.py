"""A :class:`~gradhealth.probe.ProbeResult`, for a person: a coloured table and a plot.

Measuring is separate from showing: everything here reads the frozen result only, never the
model. Layer names and messages come from user models and are data: they are wrapped in
:class:`rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from .._text import safe_text
from .run_view import AtWidth, fold_tokens, format_value

if TYPE_CHECKING:  # pragma: no cover
    from ..probe.result import ProbeResult

__all__ = ["VERDICT_STYLE", "VERDICT_COLOR", "render", "render_text", "render_html", "plot",
           "layers_table", "fmt"]

#: Rich style per verdict (terminal).
VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red",
                 "nonfinite": "bold magenta", "dead_units": "dark_orange", "saturated": "cyan"}
#: Matplotlib colour per verdict (the same hues as the terminal).
VERDICT_COLOR = {"healthy": "#2ca02c", "vanishing": "#1f77b4", "exploding": "#d62728",
                 "nonfinite": "#9400d3", "dead_units": "#ff7f0e", "saturated": "#17becf"}

#: Above this many layers the table shows the first and last ones and every flagged one.
_MAX_ROWS = 40


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: ``-`` for not measured, NaN/Inf spelled out (3 significant digits)."""
    return format_value(x, digits)


def _pct(x) -> str:
    if x is None:
        return "-"
    v = float(x)
    return "nan" if math.isnan(v) else f"{100 * v:.0f}%"


def _act_cell(lr) -> str:
    if not lr.activation:
        return "-"
    extra = ""
    if lr.act_dead_frac is not None and not math.isnan(lr.act_dead_frac):
        extra = f" dead {_pct(lr.act_dead_frac)}"
    elif lr.act_saturated_frac is not None and not math.isnan(lr.act_saturated_frac):
        extra = f" sat {_pct(lr.act_saturated_frac)}"
    return lr.activation + extra


def _rows_to_show(result) -> list:
    layers = list(result.layers)
    if len(layers) <= _MAX_ROWS:
        return layers
    keep = set(range(8)) | set(range(len(layers) - 8, len(layers)))
    keep |= {i for i, lr in enumerate(layers) if lr.verdict != "healthy"}
    if len(keep) > _MAX_ROWS:  # many flagged layers: the worst one, its neighbours, the ends
        worst = next((i for i, lr in enumerate(layers) if lr.name == result.worst_layer), 0)
        keep = set(range(6)) | set(range(len(layers) - 6, len(layers))) | set(range(max(0, worst - 6), worst + 7))
    out, prev = [], -1
    for i in sorted(keep):
        if i != prev + 1:
            out.append(i - prev - 1)  # an int marks "this many rows omitted"
        out.append(layers[i])
        prev = i
    if prev != len(layers) - 1:
        out.append(len(layers) - 1 - prev)
    return out


_OPTIONAL_COLUMNS = ("ratio", "output", "grad/w", "growth", "type")  # dropped first when narrow


def layers_table(result, width: int | None = None):
    """The per-layer table as a :class:`rich.table.Table`.

    With ``width`` (the terminal's), the least important columns are dropped until the table
    fits, so the layer names, gains and verdicts stay readable on an 80-column terminal.
    """
    from rich.table import Table
    from rich.text import Text

    columns = [("#", "right"), ("layer", "left"), ("type", "left"), ("output", "left"),
               ("activation", "left"), ("|dL/dθ|", "right"), ("grad/w", "right"),
               ("gain", "right"), ("ratio", "right"), ("growth", "right"), ("GSC", "right"),
               ("verdict", "left")]
    rows: list[list] = []
    for lr in _rows_to_show(result):
        if isinstance(lr, int):
            rows.append(["", Text(f"({lr} more, healthy)", style="dim")] + [""] * 10)
            continue
        style = VERDICT_STYLE.get(lr.verdict, "")
        shape = "x".join(str(s) for s in lr.out_shape) if lr.out_shape else "-"
        if lr.calls > 1:
            shape += f" ×{lr.calls}"
        gnorm = fmt(lr.grad_norm) if lr.trainable != "frozen" else "frozen"
        rows.append([str(lr.index), Text(safe_text(lr.name)), Text(safe_text(lr.type)), shape,
                     Text(safe_text(_act_cell(lr))), gnorm,
                     fmt(lr.grad_to_weight), fmt(lr.gain), fmt(lr.gain_ratio), fmt(lr.growth),
                     fmt(lr.gsc), Text(lr.verdict, style=style)])
    keep = list(range(len(columns)))
    if width is not None:
        widths = [max([len(name)] + [len(str(r[i])) for r in rows]) + 3 for i, (name, _) in enumerate(columns)]
        widths[1] = min(widths[1], 27)  # long names fold
        for drop in _OPTIONAL_COLUMNS:
            if sum(widths[i] for i in keep) <= width:
                break
            keep.remove(next(i for i, (n, _) in enumerate(columns) if n == drop))
    t = Table(title="layers (forward order)", title_justify="left", header_style="bold",
              show_lines=False, pad_edge=False)
    for i in keep:
        col, just = columns[i]
        t.add_column(col, justify=just, no_wrap=col != "layer", overflow="fold" if col == "layer" else "ellipsis")
    for r in rows:
        t.add_row(*[r[i] for i in keep])
    return t


def _extras(result) -> list[str]:
    lines = []
    j = result.jacobian
    if j is not None:
        top = ", ".join(fmt(s) for s in j.top)
        lines.append(f"input-output Jacobian ({j.examples} examples, w.r.t. {j.wrt}): top singular "
                     f"values {top}; rms {fmt(j.rms)}; spread top/rms {fmt(j.spread)}"
                     + ("" if j.converged else " (Lanczos not converged)"))
    mf = result.meanfield
    if mf is not None:
        th = f"; mean-field theory {fmt(mf.chi_1_theory)}" if mf.chi_1_theory is not None else ""
        crit = f" (critical sigma_w2 = {fmt(mf.critical_sigma_w2)})" if mf.critical_sigma_w2 is not None else ""
        lines.append(f"plain {mf.activation} stack {mf.layers[0]} .. {mf.layers[1]} ({mf.depth} layers): "
                     f"sigma_w2 = {fmt(mf.sigma_w2)}, sigma_b2 = {fmt(mf.sigma_b2)}{crit}; chi_1 measured "
                     f"{fmt(mf.chi_1_measured)}{th}: {mf.phase}")
    r = result.residual
    if r is not None:
        fr = [b.forward_ratio for b in r.blocks]
        lines.append(f"residual: {r.compositional_depth} blocks, branch/skip ratio "
                     f"{fmt(min(fr))}..{fmt(max(fr))}; effective depth {fmt(r.effective_depth)} blocks "
                     f"({fmt(r.effective_layers)} layers)")
    for ts in result.recurrent:
        lines.append(f"time steps of {ts.layer} ({len(ts.gains)} steps, {ts.kind}): gain x"
                     f"{fmt(ts.growth_per_step)} per step towards the past, worst/last "
                     f"{fmt(ts.ratio)} at step {ts.worst_step}"
                     + (f", recurrent spectral radius {fmt(ts.spectral_radius)}" if ts.spectral_radius else "")
                     + f": {ts.verdict}")
    return lines


def _fixed_table(title: str, columns: list[tuple[str, int]], rows: list[list], styles: list[str]):
    """A table of fixed column widths whose cells are pre-folded at token boundaries
    (:func:`fold_tokens`), so rich never cuts a word, an identifier or a number."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", header_style="bold", pad_edge=False)
    for name, w in columns:
        t.add_column(name, width=w, overflow="fold")
    for cells in rows:
        t.add_row(*[c if isinstance(c, Text) else Text(fold_tokens(safe_text(c), w), style=st)
                    for c, (_, w), st in zip(cells, columns, styles)])
    return t


def _split(width: int, fixed: list[int], shares: list[float], floor: int = 8) -> list[int]:
    """Column widths for a ``pad_edge=False`` table ``width`` wide: the fixed ones, then the
    rest shared out (3 characters per column go to borders and padding)."""
    n = len(fixed) + len(shares)
    rest = max(floor * len(shares), width - (3 * n - 1) - sum(fixed))
    out = [max(floor, int(rest * sh)) for sh in shares[:-1]]
    return fixed + out + [max(floor, rest - sum(out))]


def _findings_table(result, width: int):
    kinds = [e.kind for e in result.findings]
    sev = [e.severity for e in result.findings]
    names = [safe_text(e.layer) for e in result.findings]
    fixed = [max(map(len, kinds + ["kind"])), max(map(len, sev + ["severity"])),
             min(max(map(len, names + ["layer"])), max(5, width // 6))]
    widths = _split(width, fixed, [1.0])
    from rich.text import Text

    rows = [[Text(e.kind, style=VERDICT_STYLE.get(e.kind, "")), e.severity, safe_text(e.layer),
             safe_text(e.message)] for e in result.findings]
    return _fixed_table("findings", list(zip(("kind", "severity", "layer", "message"), widths)), rows,
                        ["", "", "", ""])


def _prescriptions_table(result, width: int):
    """The ranked prescriptions; the code (meant to be copied) and the reasons fold at token
    boundaries, never inside an identifier or a number, and nothing is cut at the edge."""
    ps = result.prescriptions
    w0 = max(len(str(p.rank)) for p in ps)
    widths = _split(width, [max(1, w0)], [0.25, 0.38, 0.37])
    longest = max(len(tok) for p in ps for tok in re.split(r"[\s(,;=]+|(?<=\.)", p.code) if tok) + 1
    if widths[2] < longest:  # room for the longest code token, taken from the reasons
        grow = min(longest - widths[2], max(0, widths[3] - 12))
        widths[2] += grow
        widths[3] -= grow
    rows = [[str(p.rank), p.action, p.code, p.reason] for p in ps]
    return _fixed_table("prescriptions (try in this order)",
                        list(zip(("#", "change", "code", "why"), widths)), rows, ["", "", "bold", ""])


def render(result: ProbeResult):
    """Everything as one rich renderable (used by ``ProbeResult.__rich__``)."""
    from rich.console import Group
    from rich.text import Text

    style = VERDICT_STYLE.get(result.verdict, "")
    head = Text()
    head.append("gradhealth probe: ", style="bold")
    head.append(result.verdict.upper(), style=f"bold {style}")
    if result.worst_layer:
        head.append("  worst layer: ")
        head.append(safe_text(result.worst_layer), style="bold")
    parts: list = [head, Text(safe_text(result.summary)), Text(
        f"loss: {result.loss.get('kind', '?')} ({result.loss.get('description', '')}) = "
        f"{fmt(result.loss.get('value'))}; mode {result.settings.get('mode')}, batch "
        f"{result.settings.get('batch')}", style="dim"), AtWidth(lambda width: layers_table(result, width=width))]
    for line in _extras(result):
        parts.append(Text(safe_text(line)))
    if result.findings:
        parts.append(AtWidth(lambda width: _findings_table(result, width)))
    if result.prescriptions:
        parts.append(AtWidth(lambda width: _prescriptions_table(result, width)))
    for n in result.notes:
        parts.append(Text("note: " + safe_text(n), style="dim"))
    return Group(*parts)


def render_text(result: ProbeResult, width: int = 140) -> str:
    """Plain text (no colour codes) of :func:`render`."""
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, force_terminal=False,
                      file=_Null())
    console.print(render(result))
    return console.export_text()


def render_html(result: ProbeResult) -> str:
    """HTML (inline styles) of :func:`render`, for notebooks."""
    from rich.console import Console

    console = Console(width=140, record=True, file=_Null(), force_terminal=True)
    console.print(render(result))
    return console.export_html(inline_styles=True)


class _Null:
    def write(self, *_a):
        return 0

    def flush(self):
        return None


# ------------------------------------------------------------------------------------------
# the plot
# ------------------------------------------------------------------------------------------
def plot(result: ProbeResult, ax=None, what: str = "auto"):
    """Gradient flow by depth on a log scale, coloured by verdict; NaN/Inf/0 are marked.

    Args:
        result: a :class:`~gradhealth.probe.ProbeResult`.
        ax: matplotlib Axes; a new figure when None.
        what: ``"layers"`` (backward gain, GSC and parameter-gradient norm per layer),
            ``"time"`` (gain per time step of each recurrent series) or ``"auto"``: time when a
            recurrent series carries the verdict or the model has fewer than 3 layers.

    Returns:
        The Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    if what == "auto":
        rec_bad = any(ts.verdict != "healthy" for ts in result.recurrent)
        what = "time" if result.recurrent and (rec_bad or len(result.layers) < 3) else "layers"
    if what == "time" and result.recurrent:
        _plot_time(result, ax)
    else:
        _plot_layers(result, ax)
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    title = f"probe: {result.verdict}"
    if result.worst_layer:
        title += f" (worst: {result.worst_layer})"
    ax.set_title(title, color=VERDICT_COLOR.get(result.verdict, "black"))
    return ax


def _series(ax, xs, ys, colors, label, style, color_line, marker_size=28):
    """Draw a log-scale series; non-finite and zero values become edge markers, not gaps."""
    cs = colors if colors is not None else [None] * len(xs)
    good = [(x, y, c) for x, y, c in zip(xs, ys, cs)
            if y is not None and math.isfinite(y) and y > 0]
    if good:
        ax.plot([g[0] for g in good], [g[1] for g in good], style, color=color_line, lw=1.4,
                label=label, zorder=2)
        if colors is not None:
            ax.scatter([g[0] for g in good], [g[1] for g in good], c=[g[2] for g in good],
                       s=marker_size, zorder=3, edgecolors="none")
    return [(x, y) for x, y in zip(xs, ys) if y is not None and not (math.isfinite(y) and y > 0)]


def _mark_bad(ax, bad, color="#9400d3"):
    """Put NaN/Inf at the top edge and exact zeros (underflow) at the bottom edge, labelled."""
    if not bad:
        return
    lo, hi = ax.get_ylim()
    for x, y in bad:
        if math.isnan(y):
            ax.scatter([x], [hi], marker="X", color=color, s=60, zorder=4, clip_on=False)
            ax.annotate("NaN", (x, hi), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7, color=color)
        elif math.isinf(y) and y > 0:
            ax.scatter([x], [hi], marker="^", color=color, s=60, zorder=4, clip_on=False)
            ax.annotate("Inf", (x, hi), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7, color=color)
        else:  # 0 (underflow) or negative: below any log axis
            ax.scatter([x], [lo], marker="v", color="#1f77b4", s=50, zorder=4, clip_on=False)
            ax.annotate("0", (x, lo), textcoords="offset points", xytext=(0, -11), ha="center",
                        fontsize=7, color="#1f77b4")


def _plot_layers(result, ax) -> None:
    from matplotlib.lines import Line2D

    layers = list(result.layers)
    xs = list(range(len(layers)))
    colors = [VERDICT_COLOR.get(lr.verdict, "gray") for lr in layers]
    bad = _series(ax, xs, [lr.gain for lr in layers], colors,
                  "backward gain ||J^T w|| / ||w||", "-", "#444444")
    bad += _series(ax, xs, [lr.gsc for lr in layers], None, "GSC (Philipp et al.)", "--", "#8c564b")
    gn = [lr.grad_norm for lr in layers]
    bad += _series(ax, xs, gn, None, "|dL/dθ| (loss)", ":", "#7f7f7f")
    _mark_bad(ax, bad)
    ax.set_xlabel("layer (forward order; input left, output right)")
    ax.set_ylabel("gradient scale (log)")
    n = len(layers)
    if n <= 24:
        ax.set_xticks(xs)
        ax.set_xticklabels([lr.name for lr in layers], rotation=60, ha="right", fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    used = dict.fromkeys(lr.verdict for lr in layers)
    for v in used:
        handles.append(Line2D([], [], marker="o", ls="", color=VERDICT_COLOR.get(v, "gray")))
        labels.append(v)
    if any(math.isnan(b[1]) or math.isinf(b[1]) for b in bad):
        handles.append(Line2D([], [], marker="^", ls="", color="#9400d3"))
        labels.append("NaN/Inf")
    ax.legend(handles, labels, fontsize=7, loc="best")


def _plot_time(result, ax) -> None:
    for ts in result.recurrent:
        color = VERDICT_COLOR.get(ts.verdict, "gray")
        xs = list(range(len(ts.gains)))
        bad = _series(ax, xs, list(ts.gains), None, f"{ts.layer}: {ts.verdict}", "-", color)
        _mark_bad(ax, bad)
    ax.set_xlabel("time step (forward order; the loss sees the last steps directly)")
    ax.set_ylabel("||dL/dh_t|| / ||w|| (log)")
    ax.legend(fontsize=7, loc="best")
