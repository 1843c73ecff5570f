"""A watched run, for a person: the diagnosis, the events table and the live status line.

Measuring is separate from showing: everything here reads a stored :class:`~gradhealth.store.Run`
(or a list of events) and never touches a model. :func:`summarize` is the diagnosis as plain
data (what ``gradhealth summary --json`` prints); the ``render_*`` functions turn it into rich
renderables. Layer names and messages come from user models and are data: they are always
wrapped in :class:`rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._text import safe_text
from ..events import Event, jsonable

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Run

__all__ = ["SEVERITY_RANK", "is_pathology", "summarize", "events_table", "EventsTable", "AtWidth",
           "render_summary", "worst_layers_table", "StatusLine", "format_value", "fold_tokens"]

#: Severity -> rank; higher is worse.
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
_SEVERITY_STYLE = {"info": "dim", "warning": "yellow", "error": "red", "critical": "bold red"}


def is_pathology(event: Event) -> bool:
    """True for an event that means the *model's training* went wrong: severity ``warning``
    or worse, and not an ``internal`` event (gradhealth's own trouble, not the model's)."""
    return event.kind != "internal" and SEVERITY_RANK.get(event.severity, 1) >= 1


def format_value(x: Any, digits: int = 4) -> str:
    """A number for a table: NaN/Inf spelled out, ``-`` for not recorded."""
    if x is None:
        return "-"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


# Inside a word too long for its column, a line may break after ( , ; = [ { / or after a dot
# that starts an attribute (not the dot of a number): never inside an identifier or a number.
# (never right after a visible escape such as ``\x1b[``: it stays whole, so it reads as one)
_BREAK = re.compile(r"(?<=[(,;=\[{/])(?<!\\x1b\[)|(?<=\.)(?=[A-Za-z_])")


def fold_tokens(text: str, width: int) -> str:
    """``text`` folded into lines of at most ``width`` characters: at spaces, and inside a word
    longer than the line only at code token boundaries (see ``_BREAK``); a single token longer
    than ``width`` is the only thing ever cut. Existing line breaks are kept."""
    width = max(1, int(width))
    out: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split():
            pieces = [w for w in _BREAK.split(word) if w] if len(word) > width else [word]
            for k, piece in enumerate(pieces):
                sep = " " if (line and k == 0) else ""
                if len(line) + len(sep) + len(piece) <= width:
                    line += sep + piece
                    continue
                if line:
                    out.append(line)
                while len(piece) > width:
                    out.append(piece[:width])
                    piece = piece[width:]
                line = piece
        out.append(line)
    return "\n".join(out)


def _event_order(e: Event):
    return (math.inf if e.step is None else e.step)


def _ranked_remedies(bad: list[Event]) -> list[dict]:
    """What to change: the earliest condition's remedy first (a NaN batch at step 2 comes before
    the non-finite parameters it left at step 4, whatever their severities), then the rest by
    severity (a critical NaN at step 100 is not pushed out by early warnings); each once."""
    def began(e):
        s = e.since if e.since is not None else e.step
        return (math.inf if s is None else s, -SEVERITY_RANK.get(e.severity, 1), _event_order(e))

    ranked = sorted(bad, key=lambda e: (-SEVERITY_RANK.get(e.severity, 1), _event_order(e)))
    head = min((e for e in bad if e.remedy), key=began, default=None)
    if head is not None:
        ranked = [head] + [e for e in ranked if e is not head]
    out: list[dict] = []
    seen: set[str] = set()
    for e in ranked:
        if e.remedy and e.remedy not in seen:
            seen.add(e.remedy)
            out.append({"remedy": e.remedy, "kind": e.kind, "layer": e.layer})
    return out


def summarize(run: "Run", events: Sequence[Event] | None = None, worst: int = 5) -> dict:
    """The diagnosis of a run as plain, JSON-safe data.

    Args:
        run: a stored run (:func:`gradhealth.store.load_run`); only ``events``, ``steps``,
            ``layers`` and ``meta`` are read.
        events: use these instead of ``run.events`` (e.g. a watcher's in-memory events
            when the store could not write).
        worst: how many layers and remedies to list.

    Returns:
        A dict with ``run_dir``, ``status``, ``steps`` (count, first, last, last loss,
        last global norm, non-finite and skipped step counts), ``n_events``,
        ``n_pathologies``, ``healthy``, ``first`` (the first pathology: step, since, kind,
        layer, severity, message, remedy), ``counts`` (per kind), ``severities``,
        ``worst_layers``, ``remedies`` and ``notes`` (what the reader could not read:
        ``Run.notes``).
    """
    evs = list(run.events if events is None else events)
    bad = [e for e in evs if is_pathology(e)]
    # First = earliest step at which something went wrong (``since`` when known); at the same
    # step a finding beats a guard action (the guard reacts to a finding), then severity, then
    # the order of arrival (detectors run shallow to deep).
    def first_key(ie):
        i, e = ie
        s = e.since if e.since is not None else e.step
        return (math.inf if s is None else s, e.kind == "guard", -SEVERITY_RANK.get(e.severity, 1), i)

    first = min(enumerate(bad), key=first_key)[1] if bad else None
    per_layer: dict[str, dict] = {}
    for e in bad:
        if e.layer is None:
            continue
        d = per_layer.setdefault(e.layer, {"layer": e.layer, "events": 0, "kinds": Counter(),
                                           "worst_severity": "info", "first_step": None})
        d["events"] += 1
        d["kinds"][e.kind] += 1
        if SEVERITY_RANK.get(e.severity, 1) > SEVERITY_RANK[d["worst_severity"]]:
            d["worst_severity"] = e.severity
        s = e.since if e.since is not None else e.step
        if s is not None and (d["first_step"] is None or s < d["first_step"]):
            d["first_step"] = s
    layers = sorted(per_layer.values(),
                    key=lambda d: (-SEVERITY_RANK[d["worst_severity"]], -d["events"],
                                   math.inf if d["first_step"] is None else d["first_step"]))
    for d in layers:
        d["kinds"] = dict(d["kinds"].most_common())
    remedies = _ranked_remedies(bad)
    steps = list(getattr(run, "steps", []) or [])
    last = steps[-1] if steps else {}

    def count(pred):
        return sum(1 for s in steps if pred(s))

    meta = getattr(run, "meta", {}) or {}
    out = {
        "run_dir": str(getattr(run, "run_dir", "")),
        "status": "finished" if "closed_at" in meta else ("running or stopped early"
                                                           if meta else "in memory"),
        "layers": len(getattr(run, "layers", []) or []),
        "steps": {
            "count": len(steps),
            "first": steps[0]["step"] if steps else None,
            "last": last.get("step"),
            "last_loss": last.get("loss"),
            "last_global_grad_norm": last.get("global_grad_norm"),
            "nonfinite_steps": count(lambda s: _nonfinite(s.get("loss"))
                                     or _nonfinite(s.get("global_grad_norm"))
                                     or (s.get("nonfinite_count") or 0) > 0),
            "skipped_steps": count(lambda s: bool(s.get("skipped"))),
        },
        "n_events": len(evs),
        "n_pathologies": len(bad),
        "healthy": not bad,
        "first": None if first is None else {
            "step": first.step, "since": first.since, "kind": first.kind, "layer": first.layer,
            "severity": first.severity, "message": first.message, "remedy": first.remedy},
        "counts": dict(Counter(e.kind for e in evs).most_common()),
        "severities": dict(Counter(e.severity for e in evs).most_common()),
        "worst_layers": layers[:worst],
        "remedies": remedies[:worst],
        "notes": [str(n) for n in getattr(run, "notes", ()) or ()],
    }
    return jsonable(out)


def _nonfinite(x) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def _text(s: Any, style: str = ""):
    from rich.text import Text

    return Text("-" if s is None else safe_text(s), style=style)


def events_table(events: Iterable[Event], title: str | None = None, max_rows: int | None = None,
                 width: int | None = None):
    """A rich Table of events: step (and since), severity, kind, layer, message, remedy.

    The table takes the console's full width and gives most of it to the message and the
    remedy. Below 110 columns (``width``) the remedy goes under the message in the same cell.
    With ``width`` every cell is folded at token boundaries (:func:`fold_tokens`): no line is
    wider than ``width``, and no identifier or number is split.
    """
    from rich.table import Table

    evs = list(events)
    narrow = width is not None and width < 110
    names = [e.layer if e.layer is not None else "(model)" for e in evs]
    shown = evs if max_rows is None or len(evs) <= max_rows else evs[:max_rows]
    steps = [_text(e.step) for e in shown]
    for st, e in zip(steps, shown):
        if e.since is not None and e.since != e.step:
            st.append(f"\nsince {e.since}", style="dim")
    widths = _event_widths(shown, names, steps, width, narrow) if width is not None else None

    def fold(s: Any, k: int, style: str = ""):  # safe_text first: its escapes fold like any text
        from rich.text import Text

        text = "-" if s is None else safe_text(s)
        return Text(fold_tokens(text, widths[k]) if widths is not None else text, style=style)

    table = Table(title=title, header_style="bold", expand=widths is None, show_lines=True)
    w = widths or [None] * 6
    table.add_column("step", justify="right", no_wrap=True, width=w[0])
    table.add_column("severity", no_wrap=True, width=w[1])
    table.add_column("kind", no_wrap=True, width=w[2])
    table.add_column("layer", overflow="fold", ratio=None if widths else 1, width=w[3],
                     min_width=None if widths else min(max([5] + [len(n) for n in names]), 14))
    table.add_column("message" + (" / remedy" if narrow else ""), overflow="fold",
                     ratio=None if widths else 4, width=w[4])
    if not narrow:
        table.add_column("remedy", overflow="fold", ratio=None if widths else 2, width=w[5])
    for e, name, step in zip(shown, names, steps):
        cells = [step, _text(e.severity, _SEVERITY_STYLE.get(e.severity, "")), _text(e.kind),
                 fold(name, 3)]
        if narrow:
            msg = fold(e.message, 4)
            if e.remedy:
                msg.append("\nfix:\n", style="bold")
                msg.append_text(fold(e.remedy, 4, style="bold"))
            cells.append(msg)
        else:
            cells += [fold(e.message, 4), fold(e.remedy or "", 5)]
        table.add_row(*cells)
    if len(shown) < len(evs):
        table.caption = f"{len(evs) - len(shown)} more event(s) not shown"
    return table


def _event_widths(evs: list, names: list, steps: list, width: int, narrow: bool) -> list[int]:
    """Column widths of the events table at ``width`` (borders and padding take 3 per column + 1):
    step, severity and kind as wide as their longest entry, the layer up to 14 (a fifth of a wide
    terminal), the rest to the
    message (and the remedy, 1:2 beside it on a wide terminal)."""
    fixed = [max([4] + [len(line) for st in steps for line in st.plain.split("\n")]),
             max([8] + [len(e.severity) for e in evs]), max([4] + [len(e.kind) for e in evs]),
             0]
    # names are shown escaped (safe_text), so measure them escaped: "x\x1b[2J" is 8 wide, not 5
    fixed[3] = min(max([5] + [len(safe_text(n)) for n in names]), max(14, (width - sum(fixed)) // 5))
    n = 5 if narrow else 6
    rest = max(10, width - (3 * n + 1) - sum(fixed))
    if narrow:
        return fixed + [rest, 0]
    msg = max(10, rest * 2 // 3)
    return fixed + [msg, max(10, rest - msg)]


class AtWidth:
    """A renderable built by ``make(width)`` at the width rich renders it at (tables that
    drop or merge columns on narrow terminals)."""

    def __init__(self, make):
        self.make = make

    def __rich_console__(self, console, options):
        yield self.make(options.max_width)


class EventsTable(AtWidth):
    """:func:`events_table` laid out for the width rich renders it at."""

    def __init__(self, events: Iterable[Event], title: str | None = None, max_rows: int | None = None):
        evs = list(events)
        super().__init__(lambda width: events_table(evs, title, max_rows, width=width))


def render_summary(summary: dict):
    """The diagnosis (from :func:`summarize`) as a rich renderable."""
    from rich.console import Group
    from rich.text import Text

    parts: list = []
    st = summary["steps"]
    head = Text()
    head.append("run ", style="bold")
    head.append(safe_text(summary["run_dir"] or "(in memory)"))
    head.append(f"  [{summary['status']}]  ", style="dim")
    if st["count"]:
        head.append(f"{st['count']} steps ({st['first']}..{st['last']}), "
                    f"{summary['layers']} layers, last loss {format_value(st['last_loss'])}, "
                    f"last grad norm {format_value(st['last_global_grad_norm'])}")
        if st["nonfinite_steps"] or st["skipped_steps"]:
            head.append(f", {st['nonfinite_steps']} non-finite and {st['skipped_steps']} "
                        "skipped step(s)")
    else:
        head.append("no steps recorded")
    parts.append(head)
    for n in summary.get("notes", ()):
        parts.append(Text(f"note: {safe_text(n)}", style="yellow"))
    if summary["healthy"]:
        line = Text("healthy: no pathology found", style="bold green")
        if summary["n_events"]:
            line.append(f" ({summary['n_events']} informational event(s))", style="dim")
        parts.append(line)
        return Group(*parts)
    f = summary["first"]
    first = Text()
    first.append("first problem: ", style="bold red")
    first.append(safe_text(f["kind"]))
    first.append(" in ")
    first.append(safe_text(f["layer"]) if f["layer"] is not None else "the model", style="bold")
    when = f["since"] if f["since"] is not None else f["step"]
    first.append(f" at step {when}" if when is not None else "")
    if f["since"] is not None and f["step"] is not None and f["since"] != f["step"]:
        first.append(f" (seen at step {f['step']})")
    first.append(f" — {safe_text(f['message'])}")
    parts.append(first)
    counts = Text("events: ", style="bold")
    counts.append(safe_text(", ".join(f"{k} {v}" for k, v in summary["counts"].items())))
    counts.append(f"  ({summary['n_pathologies']} pathological of {summary['n_events']})", style="dim")
    parts.append(counts)
    if summary["worst_layers"]:
        rows = list(summary["worst_layers"])
        parts.append(AtWidth(lambda width: worst_layers_table(rows, width)))
    if summary["remedies"]:
        parts.append(Text("what to change:", style="bold"))
        for i, r in enumerate(summary["remedies"], 1):
            line = Text(f"  {i}. ")
            line.append(safe_text(r["remedy"]))
            line.append(safe_text(f"  ({r['kind']}" + (f" in {r['layer']})" if r["layer"] else ")")), style="dim")
            parts.append(line)
    return Group(*parts)


def worst_layers_table(rows: Sequence[dict], width: int | None = None):
    """The "worst layers" table of :func:`summarize` (its ``worst_layers``), at most ``width``
    columns wide: a layer name (and the kinds) too long for its column is folded onto more lines
    at token boundaries (:func:`fold_tokens`), never cut, so layers that differ only deep inside
    their names (``encoder.layers.3.attn`` and ``encoder.layers.7.attn``) stay apart."""
    from rich.table import Table
    from rich.text import Text

    cells = [[safe_text(d["layer"]), safe_text(d["worst_severity"]), safe_text(d["events"]),
              safe_text(", ".join(f"{k} x{v}" for k, v in d["kinds"].items())),
              "-" if d["first_step"] is None else safe_text(d["first_step"])] for d in rows]
    heads = ("layer", "worst", "events", "kinds", "since step")
    natural = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    widths = list(natural)
    if width is not None:
        rest = width - (3 * len(heads) + 1) - sum(natural[1:3]) - natural[4]  # borders and padding
        if natural[0] + natural[3] > rest:
            widths[3] = min(natural[3], max(13, rest // 3))
            widths[0] = max(8, min(natural[0], rest - widths[3]))
            widths[3] = max(5, min(natural[3], rest - widths[0]))
    folded = widths != natural
    t = Table(title="worst layers", title_justify="left", header_style="bold", show_lines=folded)
    for h, w in zip(heads, widths):
        t.add_column(h, width=w if folded else None, overflow="fold", no_wrap=h in ("worst", "events", "since step"))
    for d, c in zip(rows, cells):  # cells are safe_text already: only fold_tokens' line breaks added
        t.add_row(Text(fold_tokens(c[0], widths[0])), Text(c[1], _SEVERITY_STYLE.get(d["worst_severity"], "")),
                  Text(c[2]), Text(_pack([safe_text(f"{k} x{v}") for k, v in d["kinds"].items()], widths[3])),
                  Text(c[4]))
    return t


def _pack(items: list[str], width: int) -> str:
    """``items`` joined with ", " into lines of at most ``width`` characters, breaking between
    items (``vanishing x1,`` / ``nonfinite x2``); an item longer than a line is folded."""
    lines: list[str] = []
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if lines and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.extend(fold_tokens(piece, width).split("\n"))
    return "\n".join(lines)


class StatusLine:
    """The one-line live status of ``gradhealth run``: step, loss, global grad norm, newest
    alarm. Update it with :meth:`update`; it renders itself (``rich.live.Live(status)``)."""

    def __init__(self, label: str = "gradhealth"):
        self.label = label
        self.step: int | None = None
        self.loss: float | None = None
        self.grad_norm: float | None = None
        self.alarm: Event | None = None
        self.n_alarms = 0
        self.started = time.monotonic()

    def update(self, step=None, loss=None, grad_norm=None, alarm: Event | None = None,
               n_alarms: int | None = None) -> None:
        if step is not None:
            self.step = step
        if loss is not None:
            self.loss = loss
        if grad_norm is not None:
            self.grad_norm = grad_norm
        if alarm is not None:
            self.alarm = alarm
        if n_alarms is not None:
            self.n_alarms = n_alarms

    def __rich__(self):
        from rich.text import Text

        t = Text()
        t.append(f"{self.label} ", style="bold cyan")
        elapsed = f"{time.monotonic() - self.started:.0f}s"
        if self.step is None:
            t.append(f"running, no optimizer step watched yet  {elapsed}", style="dim")
            return t
        t.append(f"step {format_value(self.step)}  loss {format_value(self.loss)}  "
                 f"grad norm {format_value(self.grad_norm)}  {elapsed}")
        if self.alarm is not None:
            e = self.alarm
            t.append(f"  ⚠ {self.n_alarms} alarm(s), newest: ", style="yellow")
            t.append(safe_text(e.kind), style=_SEVERITY_STYLE.get(e.severity, "yellow"))
            t.append(f" in {safe_text(e.layer) if e.layer is not None else 'the model'} at step {e.step}")
        else:
            t.append("  no alarm", style="green")
        return t
