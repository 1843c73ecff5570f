"""``gradhealth top``: a live terminal view of a run, read from its store by another process.

It reads ``RUN_DIR/run.sqlite`` read-only (the store is in WAL mode: a reader never blocks the
training process's writer and sees only committed batches), so watching costs the training
nothing. Each refresh reads only what it shows: the newest step row, the newest step's
per-layer gradient norms and the newest events, not the whole run.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

HELP = "live terminal view of a running (or finished) run, read from its store"
DESCRIPTION = """Show the run in RUN_DIR as it trains: step, loss, global gradient norm, a strip
of per-layer gradient norms (one character per layer, input side left) and the newest events.
Reads the run store from this process only; the training process is not touched.

Exits when the run is closed (its store's meta has closed_at), or on Ctrl-C. A RUN_DIR whose
store does not exist yet is waited for (--wait seconds, default forever).

Strip legend: ▁..█ log gradient norm (relative to the other layers), N NaN, I Inf, 0 zero,
· not recorded at that step.

Examples:
  gradhealth top runs/exp1
  gradhealth top runs/exp1 --once        # print one frame and exit
"""

_BLOCKS = "▁▂▃▄▅▆▇█"

#: The most events one frame shows (--events).
MAX_EVENTS = 1000


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.sqlite)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 1)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--events", type=int, default=6, metavar="N",
                        help=f"newest events shown (0 to {MAX_EVENTS}; default 6)")
    parser.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help="give up if the store has not appeared after SECONDS (default: wait)")


class Snapshot:
    """What one refresh read: ``state`` is ``"waiting"`` (no store yet), ``"creating"``
    (tables not there yet), ``"ok"`` or ``"error"`` (with ``error``)."""

    def __init__(self, state: str, error: str = ""):
        self.state, self.error = state, error
        self.meta: dict = {}
        self.step: dict | None = None
        self.layers: list[tuple[str, float | None]] = []
        self.events: list[tuple] = []
        self.n_steps = 0

    @property
    def closed(self) -> bool:
        return "closed_at" in self.meta


def read_snapshot(run_dir, n_events: int = 6) -> Snapshot:
    """Read the newest state of a run store, read-only; never raises."""

    from ..store.schema import (
        DB_NAME,
        LAYER_STAT_COLUMNS,
        STEP_COLUMNS,
        decode_text,
        decode_value,
        read_int,
        read_meta,
        read_text,
        sql_int,
        sql_number,
    )

    db = Path(run_dir) / DB_NAME
    if Path(run_dir).is_file() and Path(run_dir).name == DB_NAME:
        db = Path(run_dir)
    if not db.is_file():
        return Snapshot("waiting")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return Snapshot("error", str(exc))
    conn.text_factory = decode_text
    try:
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "layers", "steps", "layer_stats", "events"} <= tables:
            return Snapshot("creating")
        snap = Snapshot("ok")
        snap.meta = read_meta(conn)[0]
        # values of the wrong type (a crafted store) read as not recorded: see store.schema
        names = [c for c, _ in STEP_COLUMNS]
        row = conn.execute(f"SELECT step, {', '.join(sql_number(n) for n in names)}, "
                           f"ifnull({sql_int('nan_mask')}, 0) FROM steps WHERE typeof(step) = 'integer' "
                           "ORDER BY step DESC LIMIT 1").fetchone()
        snap.n_steps = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
        if row is not None:
            snap.step = {"step": row[0]}
            snap.step.update({n: decode_value(row[1 + i], i, row[-1]) for i, n in enumerate(names)})
            gbit = [c for c, _ in LAYER_STAT_COLUMNS].index("grad_norm")
            layer_rows = dict((li, decode_value(v, gbit, m)) for li, v, m in conn.execute(
                f"SELECT layer, {sql_number('grad_norm')}, ifnull({sql_int('nan_mask')}, 0) "
                "FROM layer_stats WHERE step = ?", (row[0],)))
            snap.layers = [(read_text(name), layer_rows.get(idx)) for idx, name in
                           conn.execute("SELECT idx, name FROM layers ORDER BY idx")
                           if idx in layer_rows]
        snap.events = [(read_int(st), read_text(sev), read_text(kind), None if layer is None else read_text(layer),
                        read_text(msg)) for st, sev, kind, layer, msg in conn.execute(
                            "SELECT step, severity, kind, layer, message FROM events "
                            "ORDER BY id DESC LIMIT ?", (n_events,)).fetchall()[::-1]]
        return snap
    except sqlite3.Error as exc:
        # "database is locked" while the writer creates it, or a damaged file: say so, retry
        return Snapshot("creating" if "locked" in str(exc) else "error", str(exc))
    finally:
        conn.close()


def strip(values: list[float | None], width: int) -> str:
    """One character per layer (binned to ``width``): the log norm relative to the others."""
    cells = []
    finite = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    for v in values:
        if v is None:
            cells.append("·")
        elif math.isnan(v):
            cells.append("N")
        elif math.isinf(v):
            cells.append("I")
        elif v <= 0:
            cells.append("0")
        else:
            t = 0.0 if hi == lo else (math.log10(v) - lo) / (hi - lo)
            cells.append(_BLOCKS[min(len(_BLOCKS) - 1, int(t * len(_BLOCKS)))])
    if len(cells) > width > 0:  # bin: a bin shows its worst cell (N, I, 0) or its highest bar
        per = math.ceil(len(cells) / width)
        rank = {"N": 100, "I": 99, "0": 98, "·": -1}
        cells = [max(cells[i:i + per], key=lambda c: rank.get(c, _BLOCKS.find(c)))
                 for i in range(0, len(cells), per)]
    return "".join(cells)


def render(snap: Snapshot, run_dir: str, width: int = 100):
    """A rich renderable of one :class:`Snapshot`; user strings made visible, never markup."""
    from rich.console import Group
    from rich.text import Text

    from ..report.html import visible
    from ..report.run_view import format_value

    head = Text("gradhealth top ", style="bold cyan")
    head.append(visible(run_dir))
    if snap.state != "ok":
        msg = {"waiting": "waiting for the run store to appear ...",
               "creating": "the run store is being created ..."}.get(snap.state, "")
        head.append(f"  {msg or 'cannot read the store: ' + visible(snap.error)}", style="yellow")
        return head
    head.append("  [finished]" if snap.closed else "  [running]", style="green" if snap.closed else "yellow")
    parts = [head]
    s = snap.step
    if s is None:
        parts.append(Text("no step recorded yet", style="dim"))
    else:
        line = Text(f"step {s['step']}  loss {format_value(s['loss'])}  grad norm "
                    f"{format_value(s['global_grad_norm'])}")
        if s.get("global_grad_norm_clipped") is not None:
            line.append(f" (applied {format_value(s['global_grad_norm_clipped'])})")
        line.append(f"  lr {format_value(s['lr'])}  {snap.n_steps} logged steps")
        if s.get("skipped"):
            line.append("  SKIPPED", style="bold red")
        parts.append(line)
    if snap.layers:
        vals = [v for _, v in snap.layers]
        t = Text(f"layers ({len(vals)}, input → output): ")
        st = strip(vals, max(10, width - 30))
        for ch in st:
            t.append(ch, style="bold red" if ch in "NI0" else "cyan")
        parts.append(t)
    if snap.events:
        parts.append(Text("newest events:", style="bold"))
        for step, sev, kind, layer, msg in snap.events:
            e = Text(f"  {step if step is not None else '-':>6} {visible(sev):<8} {visible(kind):<12} ",
                     style="red" if sev in ("error", "critical") else "")
            e.append(visible(layer) if layer is not None else "(model)", style="bold")
            e.append(" " + visible(msg)[: max(20, width - 40)])
            parts.append(e)
    else:
        parts.append(Text("no events", style="green"))
    return Group(*parts)


def run(args) -> int:
    from rich.live import Live

    from .._checks import check_int
    from . import EXIT_OK, EXIT_USAGE
    from ._common import console

    check_int(args.events, "events", "gradhealth top", min_value=0, max_value=MAX_EVENTS,
              fix=f"pass e.g. --events 6 (0 to {MAX_EVENTS}).")
    out = console()
    if args.once:
        snap = read_snapshot(args.run_dir, args.events)
        out.print(render(snap, args.run_dir, out.width))
        return EXIT_OK if snap.state == "ok" else EXIT_USAGE
    started = time.monotonic()
    interval = max(0.05, args.interval)
    try:
        with Live(console=out, auto_refresh=False, transient=False) as live:
            while True:
                snap = read_snapshot(args.run_dir, args.events)
                live.update(render(snap, args.run_dir, out.width), refresh=True)
                if snap.state == "ok" and snap.closed:
                    return EXIT_OK
                if (snap.state == "waiting" and args.wait is not None
                        and time.monotonic() - started > args.wait):
                    out.print(f"no run store appeared in {args.run_dir} after {args.wait:g} s")
                    return EXIT_USAGE
                time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
