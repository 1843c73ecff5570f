"""The report: one object, shown in the terminal (``__rich__``), a notebook (``_repr_html_``)
or written as one self-contained HTML file (``to_html``).

The first screen answers the questions in the order a person asks them: what is wrong
(the verdict), where and since when (the first bad step and layer), why (the message), and
what to change (the top prescriptions, as code to copy). Figures and the event table follow.

The HTML is built by Jinja2 with autoescaping on, so every string that comes from the user
(layer names, paths, script arguments, messages) is escaped; before that, characters that
are hostile to a reader (control characters such as ESC, U+2028, bidi overrides, zero-width
characters) are made visible as escapes by :func:`visible`, in the HTML and in the terminal
alike. The file needs no network and no JavaScript: images are inline base64 PNGs, the
styles are inline, and a Content-Security-Policy forbids any request.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .._text import safe_text
from ..errors import StoreError
from ..events import Event
from .probe_json import load_probe, probe_from_dict
from .run_view import SEVERITY_RANK, format_value, is_pathology, summarize

__all__ = ["Report", "FigureSpec", "visible", "probe_from_dict", "load_probe", "write_demo_report"]

def visible(text: Any, keep_newlines: bool = False) -> str:
    """``text`` with every terminal- or reader-hostile character written as an escape.

    ``"\\x1b[31mred"`` stays readable as the literal text ``\\x1b[31mred`` instead of turning
    the terminal red; a bidi override (U+202E) cannot reorder what follows it; U+2028 cannot
    break a line. ``None`` becomes ``"-"``.

    Args:
        text: any value (converted with ``str``).
        keep_newlines: keep ``\\n`` as a line break (multi-line messages and code).
    """
    if text is None:
        return "-"
    return safe_text(text, keep_newlines=keep_newlines)


@dataclass
class FigureSpec:
    """One figure of a report: ``draw(ax)`` draws it on a fresh Axes of ``size`` inches."""

    slug: str
    title: str
    caption: str
    draw: Callable[[Any], Any]
    size: tuple = (9.0, 3.2)


@dataclass
class Report:
    """What a person looks at: verdict, first problem, prescriptions, figures, events.

    Build one with :meth:`from_run` or :meth:`from_probe`; show it with ``rich.print``, in a
    notebook, or write it with :meth:`to_html` / :meth:`to_image`.

    Attributes:
        kind: ``"run"``, ``"probe"`` or ``"unreadable"`` (nothing could be read).
        source: where it came from (a run directory or a JSON file), for the header.
        verdict: ``"healthy"``, a diagnosis kind (``"nonfinite"``, ``"vanishing"``...) or
            ``"unreadable"``.
        headline: one sentence under the verdict.
        first: the first problem: ``{"step", "since", "layer", "kind", "message"}`` or None.
        prescriptions: ``[{"action", "code", "why"}]``, the change to try first first.
        facts: ``[(label, value)]`` shown in the header (steps, layers, status).
        events: the events (a run's, or a probe's findings).
        figures: the figures, drawn when the report is rendered.
        problems: what could not be read or measured, said plainly.
        damaged: part of the source could not be read (the report is partial).
        layers: one row per layer for the layer table: ``{"index", "name", "type",
            "n_params", "last", "nonfinite_steps", "first_nonfinite"}``.
    """

    kind: str
    source: str
    verdict: str
    headline: str
    first: dict | None = None
    prescriptions: list = field(default_factory=list)
    facts: list = field(default_factory=list)
    events: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    damaged: bool = False
    layers: list = field(default_factory=list)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir) -> "Report":
        """The report of a stored run (a run directory, its ``run.sqlite``, or a loaded
        :class:`~gradhealth.store.Run`).

        Never raises for a bad run: an unreadable one gives a report that says why
        (``kind == "unreadable"``); one whose per-layer rows cannot be read gives the rest.
        """
        from ..store import Run, load_run

        problems: list[str] = []
        damaged = False
        if isinstance(run_dir, Run):
            run = run_dir if run_dir.columns is not None else replace(run_dir, columns=run_dir.layer_columns())
        else:
            try:  # columns, not a dict per row: 1e5 steps x 500 layers stay tractable
                run = load_run(run_dir, layer_stats="columns", fields=REPORT_FIELDS, max_steps=MAX_DRAWN_STEPS)
            except StoreError as exc:
                try:  # the per-layer table is the biggest: a damaged page there spares the rest
                    run = load_run(run_dir, layer_stats=False)
                except StoreError:
                    return cls.unreadable(str(run_dir), str(exc))
                damaged = True
                problems.append(f"the per-layer rows could not be read ({exc}); the heatmap and "
                                "update ratios are missing")
        problems.extend(run.notes)
        report = _run_report(run, problems)
        report.damaged = damaged
        return report

    @classmethod
    def unreadable(cls, source: str, why: str) -> "Report":
        """A report that says what could not be read, and why."""
        return cls(kind="unreadable", source=source, verdict="unreadable",
                   headline="nothing could be read from this source", problems=[why])

    @classmethod
    def from_probe(cls, result) -> "Report":
        """The report of a probe: a :class:`~gradhealth.probe.ProbeResult`, its ``to_dict()``,
        or the path of the JSON ``gradhealth probe --json`` printed."""
        result = _probe_source(result)
        return result if isinstance(result, Report) else _probe_report(result)

    @classmethod
    def from_cure(cls, before, after, applied: Sequence = ()) -> "Report":
        """The report of a cure: the probe of the model before and after the change.

        Args:
            before, after: :class:`~gradhealth.probe.ProbeResult` (or their ``to_dict()`` /
                JSON path, as for :meth:`from_probe`).
            applied: the :class:`~gradhealth.events.Prescription` records that were applied
                (default: the top prescription of ``before``).
        """
        from .more_figures import plot_cure

        b, a = _probe_source(before), _probe_source(after)
        for res in (b, a):
            if isinstance(res, Report):
                return res
        rep = _probe_report(b)
        used = list(applied) or list(b.prescriptions[:1])
        rep.kind, rep.verdict = "cure", a.verdict
        rep.headline = (f"before: {b.verdict}" + (f" (worst: {b.worst_layer})" if b.worst_layer else "")
                        + f"; after the cure: {a.verdict}" + (f" (worst: {a.worst_layer})" if a.worst_layer else ""))
        rep.prescriptions = [{"action": "applied: " + p.action, "code": p.code, "why": p.reason} for p in used]
        rep.facts = [("before", b.verdict), ("after", a.verdict)] + rep.facts
        rep.figures.insert(0, FigureSpec("cure", "Before and after the cure",
                                         "Backward gain per layer of the same model before (red) and "
                                         "after (green) the applied change.", lambda ax: plot_cure(b, a, ax=ax),
                                         (9.0, 3.8)))
        if not a.healthy:
            rep.problems.append(f"after the cure the model is still {a.verdict}: {a.summary}")
        rep.events = list(a.findings) + list(b.findings)
        return rep

    # -- output -----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """True when no pathology was found (and something could be read)."""
        return self.verdict == "healthy"

    def render_figures(self, dpi: int = 100) -> list[dict]:
        """Draw every figure; ``[{"slug", "title", "caption", "png" (base64) | "error"}]``.

        A figure that fails to draw is reported in its place, never raised."""
        # Figure objects, not pyplot: no GUI backend is touched (notebooks, servers, threads)
        from matplotlib.figure import Figure

        out = []
        for f in self.figures:
            item = {"slug": f.slug, "title": f.title, "caption": f.caption}
            try:
                fig = Figure(figsize=f.size, layout="constrained")
                ax = fig.subplots()
                f.draw(ax)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=dpi)
                item["png"] = base64.b64encode(buf.getvalue()).decode("ascii")
            except Exception as exc:  # noqa: BLE001 - a broken figure must not lose the report
                item["error"] = f"{type(exc).__name__}: {exc}"
            out.append(item)
        return out

    def html_fragment(self) -> str:
        """The report as an HTML fragment (styles included), for notebooks."""
        return render_page(self, self.render_figures(), full=False)

    def to_html_string(self) -> str:
        """The report as one self-contained HTML document."""
        return render_page(self, self.render_figures(), full=True)

    def to_html(self, path) -> Path:
        """Write the self-contained HTML report to ``path`` (parents created); return it."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_html_string(), encoding="utf-8")
        return p

    def to_image(self, path, format: str | None = None, dpi: int = 100) -> Path:
        """Write every figure stacked into one PNG or SVG (``format`` from the suffix)."""
        from matplotlib.figure import Figure

        p = Path(path)
        fmt = (format or p.suffix.lstrip(".") or "png").lower()
        figs = self.figures or [FigureSpec("empty", "nothing to draw", "", _draw_nothing(self))]
        heights = [f.size[1] for f in figs]
        fig = Figure(figsize=(9, sum(heights) + 0.6), layout="constrained")
        axes = fig.subplots(len(figs), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
        fig.suptitle(visible(f"gradhealth: {self.verdict.upper()}: {self.headline}")[:160]
                     .replace("$", r"\$"), fontsize=10)
        for f, ax in zip(figs, axes[:, 0]):
            try:
                f.draw(ax)
            except Exception as exc:  # noqa: BLE001 - one broken panel must not lose the rest
                ax.text(0.5, 0.5, f"{f.title}: could not draw ({type(exc).__name__})",
                        ha="center", transform=ax.transAxes)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format=fmt, dpi=dpi)
        return p

    def _repr_html_(self) -> str:
        return self.html_fragment()

    def __rich__(self):
        return render_rich(self)


def _probe_source(result):
    """A probe result from a ProbeResult, its ``to_dict()`` or a JSON path; for a path that
    cannot be read, the unreadable Report that says why."""
    if isinstance(result, (str, os.PathLike)):
        try:
            return load_probe(result)
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            return Report.unreadable(str(result), f"{str(result)!r} is not a readable probe result "
                                     f"JSON ({exc}). Fix: pass the output of `gradhealth probe --json`.")
    return probe_from_dict(result) if isinstance(result, dict) else result


def _draw_nothing(report: Report):
    def draw(ax):
        ax.text(0.5, 0.5, visible(report.problems[0] if report.problems else report.headline)[:120],
                ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()

    return draw


# ------------------------------------------------------------------------------------------
# a run
# ------------------------------------------------------------------------------------------
def _run_report(run, problems: list[str]) -> Report:
    from . import figures as F

    s = summarize(run)
    st = s["steps"]
    first = s["first"]
    if not run.steps and not run.events:
        problems.append("no step has been recorded yet (the run is empty, or training has not "
                        "reached its first logged step)")
    if not run.finished:
        problems.append("the run is not finished (still training, or the process died): this "
                        f"is a snapshot up to step {st['last']}")
    layer_rows = _layer_rows(run)
    bad = sorted((r["first_nonfinite"], r["index"], r["name"]) for r in layer_rows if r["nonfinite_steps"])
    if s["healthy"] and bad:   # counted NaN/Inf are never reported as healthy, events or not
        problems.append(f"non-finite gradients are stored for {len(bad)} layer(s) but no event "
                        "describes them (the events were lost, or another tool wrote the run)")
        verdict, headline = "nonfinite", f"nonfinite in {_layer_label(bad[0][2])} at step {bad[0][0]}"
    elif s["healthy"]:
        verdict = "healthy" if run.steps else "no data"
        headline = ("no pathology found" if run.steps else "nothing recorded yet")
    else:
        verdict = first["kind"]
        when = first["since"] if first["since"] is not None else first["step"]
        headline = (f"{first['kind']} in {_layer_label(first['layer'])}"
                    + (f" at step {when}" if when is not None else ""))
    presc = [{"action": f"for {r['kind']}" + (f" in layer {r['layer']}" if r["layer"] else ""),
              "code": r["remedy"], "why": ""} for r in s["remedies"][:3]]
    c, m = F.clip_fraction(run)
    facts = [("run", str(run.run_dir)), ("status", s["status"]),
             ("steps", f"{st['count']} logged ({st['first']}..{st['last']})" if st["count"] else "0"),
             ("layers", str(s["layers"])),
             ("last loss", format_value(st["last_loss"])),
             ("non-finite steps", str(st["nonfinite_steps"])),
             ("skipped steps", str(st["skipped_steps"])),
             ("clipped steps", f"{c} of {m}"),
             ("events", f"{s['n_events']} ({s['n_pathologies']} pathological)")]
    for key in ("model", "command", "argv", "script"):
        if key in run.meta:
            facts.append((key, _short(run.meta[key])))
    figs = []
    cols = run.layer_columns()
    if len(cols) and cols.recorded.get("grad_norm", cols.step[:0]).any():
        drawn = (f" Drawn from {cols.sampled[0]:,} of {cols.sampled[1]:,} logged steps, evenly spaced, plus "
                 "every value that is NaN, infinite or zero: those and the counts are complete."
                 if cols.sampled else "")
        figs.append(FigureSpec("grad_heatmap", "Gradient flow",
                               "Per-layer gradient norm (log10 colour), layers in depth order, "
                               "input at top. NaN, Inf and zeros are cells of their own colour, "
                               "counted in the legend; x marks an event." + drawn,
                               _bind(F.plot_grad_heatmap, run), (9.0, max(2.8, min(8.0, 1.6 + 0.22 * len(run.layers))))))
    if run.steps:
        figs.append(FigureSpec("loss", "Loss", "The observed loss; red lines are events, grey "
                               "bands skipped steps.", _bind(F.plot_loss, run)))
        figs.append(FigureSpec("global_norm", "Global gradient norm, before and after clipping",
                               "If clipping works, the applied norm stays at the threshold "
                               "while the pre-clip norm spikes.", _bind(F.plot_global_norm, run)))
    if "update_ratio" in cols.recorded and cols.recorded["update_ratio"].any():
        figs.append(FigureSpec("update_ratio", "Update ratio per layer",
                               "||Δθ|| / ||θ|| on detail steps: ~1e-3 is typical; far below, "
                               "the layer stopped learning.", _bind(F.plot_update_ratio, run)))
    from . import more_figures as M

    for i, name in M.recurrent_layers(run)[:4]:
        figs.append(FigureSpec(f"time_grads_{i}", f"Gradient per time step: {name}",
                               "The gradient norm reaching each time step of the recurrent layer's "
                               "input on the detail steps (log scale); NaN/Inf at the top edge, "
                               "0/-Inf at the bottom, counted in the legend.",
                               _bind_layer(M.plot_time_grads, run, i), (9.0, 3.2)))
    return Report(kind="run", source=str(run.run_dir), verdict=verdict, headline=headline,
                  first=_first_dict(first), prescriptions=presc, facts=facts,
                  events=list(run.events), figures=figs, problems=problems,
                  layers=layer_rows)


def _layer_rows(run) -> list[dict]:
    """Per layer: the newest gradient norm and when its gradient was first non-finite."""
    import numpy as np

    from .figures import nonfinite_layer_rows

    rows = {d["index"]: {**d, "last": None, "nonfinite_steps": 0, "first_nonfinite": None}
            for d in run.layers}
    cols = run.layer_columns()
    if "grad_norm" not in cols.values or not len(cols):
        return list(rows.values())
    rec = cols.recorded["grad_norm"]
    bad = nonfinite_layer_rows(run) & rec
    li, st, g = cols.layer[rec], cols.step[rec], cols.values["grad_norm"][rec]
    b = bad[rec]
    # rows are in (step, layer) order: a layer's last row is its newest, its first bad one the first
    u, at = np.unique(li[::-1], return_index=True)
    last = g[li.size - 1 - at]
    ub, first_at = np.unique(li[b], return_index=True)
    nbad = np.bincount(li[b] - (li.min() if li.size else 0), minlength=0) if b.any() else None
    for i, v in zip(u.tolist(), last.tolist()):
        if i in rows:
            rows[i]["last"] = v
    for i, s0 in zip(ub.tolist(), st[b][first_at].tolist()):
        if i in rows:
            rows[i]["first_nonfinite"] = int(s0)
            rows[i]["nonfinite_steps"] = int(nbad[i - li.min()])
    return list(rows.values())


def _bind_layer(plot, run, layer):
    def draw(ax):
        return plot(run, layer, ax=ax)

    return draw


def _bind(plot, data):
    def draw(ax):
        return plot(data, ax=ax)

    return draw


def _first_dict(first: dict | None) -> dict | None:
    if first is None:
        return None
    return {k: first.get(k) for k in ("step", "since", "layer", "kind", "message", "severity")}


def _layer_label(layer) -> str:
    return "the model as a whole" if layer is None else f"layer {layer}"


def _short(v: Any, n: int = 200) -> str:
    t = " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return t if len(t) <= n else t[: n - 1] + "…"


# ------------------------------------------------------------------------------------------
# a probe
# ------------------------------------------------------------------------------------------
def _probe_report(result) -> Report:
    from . import figures as F

    worst = result.worst_layer
    top = result.findings[0] if result.findings else None
    first = None
    if not result.healthy:
        first = {"step": None, "since": None, "layer": top.layer if top is not None else worst,
                 "kind": result.verdict, "message": result.summary,
                 "severity": top.severity if top is not None else "warning"}
    headline = (result.summary if result.healthy else
                f"{result.verdict} in {_layer_label(first['layer'])}")
    presc = [{"action": p.action, "code": p.code, "why": p.reason} for p in result.prescriptions[:3]]
    facts = [("layers", str(len(result.layers))),
             ("loss", f"{result.loss.get('kind', '?')} = {format_value(result.loss.get('value'))}"),
             ("mode", str(result.settings.get("mode"))), ("batch", str(result.settings.get("batch")))]
    figs = [FigureSpec("probe_layers", "Gradient by depth",
                       "Backward gain, GSC and parameter-gradient norm per layer (forward "
                       "order), dots in verdict colours; NaN/Inf/0 marked at the edges.",
                       _bind(F.plot_probe_layers, result), (9.0, 4.2))]
    from .more_figures import plot_probe_meanfield

    figs.append(FigureSpec("probe_meanfield", "Measured gain against mean-field theory",
                           "Backward gain per layer (dots in verdict colours) and, for a plain "
                           "fully connected stack, the gain mean-field theory predicts from its "
                           "activation and weight variance (chi_1 per layer, anchored at the "
                           "stack's last layer). Without a prediction the title says why.",
                           _bind(plot_probe_meanfield, result), (9.0, 3.6)))
    if result.recurrent:
        figs.append(FigureSpec("probe_time", "Gradient per time step", "Recurrent layers: the "
                               "gradient reaching each time step.", _bind(F.plot_probe_time, result), (9.0, 3.6)))
    if result.jacobian is not None:
        figs.append(FigureSpec("probe_jacobian", "Jacobian singular values",
                               "Top singular values of the input-output Jacobian against their "
                               "rms: an isometry keeps them close.", _bind(F.plot_probe_jacobian, result), (7.0, 3.0)))
    return Report(kind="probe", source="probe", verdict=result.verdict, headline=headline,
                  first=first, prescriptions=presc, facts=facts, events=list(result.findings),
                  figures=figs, problems=list(result.notes))


#: The per-layer columns the run report reads.
REPORT_FIELDS = ("grad_norm", "nonfinite", "update_ratio")
#: A run with more logged steps is drawn from this many evenly spaced ones (plus every step
#: with a special value): the heatmap shows at most MAX_COLS columns anyway.
MAX_DRAWN_STEPS = 2400

# ------------------------------------------------------------------------------------------
# the demo's report
# ------------------------------------------------------------------------------------------
def write_demo_report(out_dir, items: Sequence[tuple[str, Report]], links: Sequence[tuple[str, str]] = (),
                      title: str = "gradhealth demo") -> Path:
    """Write each report to ``out_dir/<slug>.html`` and an ``index.html`` that links them.

    Args:
        out_dir: the folder (created).
        items: ``(slug, report)`` pairs, e.g. ``("broken_run", Report.from_run(d))``; the slug
            becomes the file name (characters other than letters, digits, ``-_`` become ``_``).
        links: extra ``(label, relative href)`` links, e.g. the gallery's index.
        title: the index page's title.

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for slug, rep in items:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", slug) + ".html"
        rep.to_html(out / name)
        entries.append({"href": name, "slug": slug, "verdict": rep.verdict, "headline": rep.headline})
    index = out / "index.html"
    index.write_text(render_index(title, entries, list(links)), encoding="utf-8")
    return index


def sanitized_events(events: Sequence[Event]) -> list[Event]:
    """The events with their user-facing strings passed through :func:`visible`."""
    return [replace(e, layer=None if e.layer is None else visible(e.layer),
                    message=visible(e.message, keep_newlines=True),
                    remedy=visible(e.remedy, keep_newlines=True)) for e in events]


def worst_first(events: Sequence[Event]) -> list[Event]:
    """Pathologies before the rest, then by step (unstepped last), keeping arrival order."""
    return sorted(events, key=lambda e: (not is_pathology(e), math.inf if e.step is None else e.step,
                                         -SEVERITY_RANK.get(e.severity, 1)))


# ------------------------------------------------------------------------------------------
# rendering: HTML (Jinja2, autoescaped) and rich
# ------------------------------------------------------------------------------------------
_VERDICT_HUE = {"healthy": "#2ca02c", "vanishing": "#1f77b4", "exploding": "#d62728",
                "nonfinite": "#9400d3", "dead_units": "#ff7f0e", "saturated": "#17becf",
                "unreadable": "#555555"}
_MAX_EVENT_ROWS = 2000

_CSS = """
.gh-report{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1b1b1b;max-width:1100px;margin:0 auto;padding:12px 20px}
.gh-report h1{font-size:26px;margin:4px 0 6px}
.gh-report .verdict{color:#fff;padding:1px 10px;border-radius:4px}
.gh-report .where{font-size:19px;margin:4px 0}
.gh-report .why{margin:4px 0 10px;white-space:pre-wrap}
.gh-report .layer,.gh-report code{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;
 background:#f3f3f3;padding:0 3px;border-radius:3px;white-space:pre-wrap;overflow-wrap:anywhere}
.gh-report pre{background:#272822;color:#f8f8f2;padding:8px 10px;border-radius:4px;
 overflow-x:auto;white-space:pre-wrap;word-break:break-all;margin:2px 0 4px}
.gh-report pre code{background:none;color:inherit;padding:0}
.gh-report ol.presc{margin:4px 0 8px;padding-left:22px}
.gh-report .problems{background:#fff4e0;border-left:4px solid #ff9800;padding:4px 10px;margin:6px 0}
.gh-report dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:0 12px;font-size:13px;
 color:#444;margin:6px 0}
.gh-report dl.facts dt{font-weight:600}.gh-report dl.facts dd{margin:0;word-break:break-all}
.gh-report figure{margin:18px 0}.gh-report figure img{max-width:100%;height:auto;border:1px solid #ddd}
.gh-report figcaption{font-size:13px;color:#444}
.gh-report table.events{border-collapse:collapse;width:100%;font-size:13px}
.gh-report table.events th,.gh-report table.events td{border:1px solid #ddd;padding:3px 6px;
 vertical-align:top;text-align:left}
.gh-report td.msg{white-space:pre-wrap}
.gh-report tr.sev-error td,.gh-report tr.sev-critical td{background:#fff0f0}
.gh-report tr.sev-warning td{background:#fffbe6}
.gh-report .err{color:#b00020}
"""

_PAGE = """{% if full %}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradhealth report: {{ r.verdict|v }} {{ r.source|v }}</title></head><body>{% endif %}
<style>{{ css|safe }}</style>
<div class="gh-report">
<header id="first-screen">
<h1>gradhealth {{ r.kind|v }} report: <span class="verdict" style="background:{{ hue }}">{{ r.verdict|v|upper }}</span></h1>
{% if r.kind == "cure" %}<p class="where" id="cure-outcome">{{ r.headline|v }}</p>{% endif %}
{% if r.first %}<p class="where" id="first-problem">{% if r.kind == "cure" %}Before the cure, the first problem{% else %}First problem{% endif %}: <b>{{ r.first.kind|v }}</b> in
{% if r.first.layer is not none %}layer <code class="layer">{{ r.first.layer|v }}</code>{% else %}the model as a whole{% endif %}
{% if when is not none %} at step <b class="step">{{ when }}</b>{% if r.first.step is not none and r.first.step != when %} (seen at step {{ r.first.step }}){% endif %}{% endif %}</p>
<p class="why"><b>Why:</b> {{ r.first.message|vn }}</p>
{% else %}<p class="where" id="first-problem">{{ r.headline|v }}</p>{% endif %}
{% if r.prescriptions %}<h2>What to change</h2><ol class="presc">{% for p in r.prescriptions %}
<li><b>{{ p.action|v }}</b><pre><code>{{ p.code|vn }}</code></pre>{% if p.why %}<span>{{ p.why|vn }}</span>{% endif %}</li>{% endfor %}
</ol>{% endif %}
{% if r.problems %}<div class="problems">{% for p in r.problems %}<p>{{ p|vn }}</p>{% endfor %}</div>{% endif %}
<dl class="facts">{% if r.kind == "probe" %}<dt>source</dt><dd>{{ r.source|v }}</dd>{% endif %}
{% for k, val in r.facts %}<dt>{{ k|v }}</dt><dd>{{ val|v }}</dd>{% endfor %}</dl>
</header>
{% if figures %}<section id="figures"><h2>Figures</h2>{% for f in figures %}
<figure id="fig-{{ f.slug|v }}"><figcaption><b>{{ f.title|v }}.</b> {{ f.caption|v }}</figcaption>
{% if f.get('png') %}<img src="data:image/png;base64,{{ f.png }}" alt="{{ f.title|v }}">{% else %}<p class="err">could not draw this figure: {{ f.error|v }}</p>{% endif %}
</figure>{% endfor %}</section>{% endif %}
{% if layers %}<section id="layers"><h2>Layers ({{ r.layers|length }}, depth order)</h2>
<table class="events"><thead><tr><th>#</th><th>layer</th><th>type</th><th>params</th><th>last grad norm</th><th>non-finite steps</th><th>first non-finite</th></tr></thead><tbody>
{% for d in layers %}<tr{% if d.nonfinite_steps %} class="sev-error"{% endif %}><td>{{ d.index }}</td><td><code class="layer">{{ d.name|v }}</code></td><td>{{ d.type|v }}</td>
<td>{{ d.n_params if d.n_params is not none else "-" }}</td><td>{{ fmt(d.last) }}</td><td>{{ d.nonfinite_steps }}</td><td>{{ d.first_nonfinite if d.first_nonfinite is not none else "-" }}</td></tr>{% endfor %}
</tbody></table>{% if r.layers|length > layers|length %}<p>{{ r.layers|length - layers|length }} more layer(s) not listed.</p>{% endif %}</section>{% endif %}
<section id="events"><h2>Events ({{ r.events|length }})</h2>
{% if events %}<table class="events"><thead><tr><th>step</th><th>severity</th><th>kind</th><th>layer</th><th>message</th><th>remedy</th></tr></thead><tbody>
{% for e in events %}<tr class="sev-{{ e.severity|v }}"><td>{{ e.step if e.step is not none else "-" }}{% if e.since is not none and e.since != e.step %}<br><small>since {{ e.since }}</small>{% endif %}</td>
<td>{{ e.severity|v }}</td><td>{{ e.kind|v }}</td><td><code class="layer">{{ (e.layer if e.layer is not none else "(model)")|v }}</code></td>
<td class="msg">{{ e.message|vn }}</td><td>{% if e.remedy %}<code>{{ e.remedy|vn }}</code>{% endif %}</td></tr>{% endfor %}
</tbody></table>{% if hidden %}<p>{{ hidden }} more event(s) not listed (the counts above include them).</p>{% endif %}
{% else %}<p>No events.</p>{% endif %}</section>
<footer><small>written by gradhealth from the stored record only; no network, no JavaScript.</small></footer>
</div>{% if full %}</body></html>{% endif %}
"""

_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title|v }}</title></head><body><style>{{ css|safe }}</style><div class="gh-report">
<h1>{{ title|v }}</h1><ul>{% for e in entries %}
<li><a href="{{ e.href }}">{{ e.slug|v }}</a>: <b>{{ e.verdict|v }}</b> {{ e.headline|v }}</li>{% endfor %}
{% for label, href in links %}<li><a href="{{ href }}">{{ label|v }}</a></li>{% endfor %}</ul></div></body></html>
"""


def _env():
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["v"] = visible
    env.filters["vn"] = lambda s: visible(s, keep_newlines=True)
    return env


def render_page(report: Report, figures: list[dict], full: bool = True) -> str:
    """The HTML of ``report`` with its drawn ``figures`` (from :meth:`Report.render_figures`)."""
    first = report.first or {}
    when = first.get("since") if first.get("since") is not None else first.get("step")
    events = worst_first(report.events)
    return _env().from_string(_PAGE).render(
        r=report, full=full, css=_CSS, hue=_VERDICT_HUE.get(report.verdict, "#d62728"),
        when=when, figures=figures, events=events[:_MAX_EVENT_ROWS], fmt=format_value,
        layers=report.layers[:_MAX_EVENT_ROWS],
        hidden=max(0, len(events) - _MAX_EVENT_ROWS))


def render_index(title: str, entries: list[dict], links: list) -> str:
    """The demo's index page linking several reports."""
    return _env().from_string(_INDEX).render(title=title, entries=entries, links=links, css=_CSS)


def render_rich(report: Report):
    """The first screen and the events as a rich renderable; every user string is made
    :func:`visible` and wrapped in :class:`rich.text.Text` (never parsed as markup)."""
    from rich.console import Group
    from rich.text import Text

    from .probe_view import VERDICT_STYLE
    from .run_view import EventsTable

    head = Text()
    head.append(f"gradhealth {report.kind} report: ", style="bold")
    head.append(visible(report.verdict).upper(), style="bold " + VERDICT_STYLE.get(report.verdict, "red"))
    head.append("  ")
    head.append(visible(report.source), style="dim")
    parts: list = [head]
    f = report.first
    if f:
        t = Text("first problem: ", style="bold red")
        t.append(visible(f["kind"]))
        t.append(" in ")
        t.append("the model as a whole" if f["layer"] is None else "layer " + visible(f["layer"]),
                 style="bold")
        when = f["since"] if f["since"] is not None else f["step"]
        if when is not None:
            t.append(f" at step {when}")
        parts += [t, Text("why: " + visible(f["message"], keep_newlines=True))]
    else:
        parts.append(Text(visible(report.headline)))
    for i, p in enumerate(report.prescriptions, 1):
        line = Text(f"{i}. " + visible(p["action"]) + "\n   ")
        line.append(visible(p["code"], keep_newlines=True), style="bold")
        parts.append(line)
    for p in report.problems:
        parts.append(Text("note: " + visible(p, keep_newlines=True), style="yellow"))
    parts.append(Text(" · ".join(f"{visible(k)} {visible(v)}" for k, v in report.facts), style="dim"))
    if report.events:
        parts.append(EventsTable(sanitized_events(worst_first(report.events)), max_rows=20))
    return Group(*parts)
