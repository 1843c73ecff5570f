"""``gradhealth top``: a live terminal view of a run, read from its store by another process.

It reads ``RUN_DIR/run.sqlite`` without writing to it (the store is in WAL mode: a reader never
blocks the training process's writer and sees only committed batches), so watching costs the
training nothing. Each refresh reads only what it shows: the newest step row, the newest step's
per-layer gradient norms and the newest events, not the whole run. Whether the store is a
gradhealth run at all is decided by the store reader (:func:`gradhealth.store.load_run`), once
per store file, so ``top`` refuses exactly what ``summary`` refuses.
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
store does not exist yet is waited for (--wait seconds, default forever). Exit code 2 when
RUN_DIR is not a gradhealth run (as for `gradhealth summary`; a store still without its
schema after 5 s is asked about too), or when --wait ran out.

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
                        help="refresh every SECONDS (> 0; default 1)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--events", type=int, default=6, metavar="N",
                        help=f"newest events shown (0 to {MAX_EVENTS}; default 6)")
    parser.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help="give up if the store is not readable after SECONDS (>= 0; default: wait)")


class Snapshot:
    """What one refresh read: ``state`` is ``"waiting"`` (no store yet), ``"creating"``
    (the writer is still creating the tables), ``"ok"``, ``"invalid"`` (not a gradhealth run:
    ``error`` is the store reader's reason, the one ``gradhealth summary`` gives) or ``"error"``
    (an SQLite error, with ``error``; retried)."""

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


#: Store files the reader accepted: (path, device, inode, schema version). A file keeps its
#: verdict while it keeps its inode and version (a new run in the same directory is a new file).
_ACCEPTED: set[tuple[str, int, int, int]] = set()


def store_problem(run_dir, version: int | None = None) -> str | None:
    """Why :func:`gradhealth.store.load_run` refuses ``run_dir`` (its message), or None when it
    reads it. The reader's own checks, so ``top`` and ``summary`` agree; a store it accepted
    is not read in full again (see ``_ACCEPTED``)."""
    from ..errors import GradHealthError
    from ..store import DB_NAME, load_run

    p = Path(run_dir)
    db = p if p.name == DB_NAME and p.is_file() else p / DB_NAME
    try:
        st = db.stat()
        key = (str(db.resolve()), st.st_dev, st.st_ino, -1 if version is None else version)
    except OSError:
        key = None
    if key is not None and version is not None and key in _ACCEPTED:
        return None
    try:
        load_run(run_dir, layer_stats=False, after_step=_LAST_STEP)  # meta, layers, events only
    except GradHealthError as exc:
        return str(exc)
    if key is not None and version is not None:
        _ACCEPTED.add(key)
    return None


#: The largest SQLite integer: ``after_step`` that skips every step row.
_LAST_STEP = (1 << 63) - 1


def read_snapshot(run_dir, n_events: int = 6) -> Snapshot:
    """Read the newest state of a run store, read-only; never raises."""
    from ..store.schema import DB_NAME, decode_text

    p = Path(run_dir)
    db = p if p.name == DB_NAME and p.is_file() else p / DB_NAME
    if p.exists() and not p.is_dir() and db is not p:  # a file, not a run directory
        return Snapshot("invalid", store_problem(run_dir) or f"{str(p)!r} is not a run directory.")
    if not db.is_file():
        return Snapshot("waiting")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return Snapshot("error", str(exc))
    conn.text_factory = decode_text
    try:
        conn.execute("BEGIN")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            # the writer sets the version last, with the first metadata, once every table exists
            return Snapshot("creating")
        problem = store_problem(run_dir, version)
        if problem is not None:
            return Snapshot("creating" if "locked" in problem else "invalid", problem)
        return _read_frame(conn, n_events)
    except sqlite3.Error as exc:
        # "database is locked" while the writer creates it, or a damaged file: say so, retry
        return Snapshot("creating" if "locked" in str(exc) else "error", str(exc))
    finally:
        conn.close()


def _read_frame(conn, n_events: int) -> Snapshot:
    """The newest step, its per-layer gradient norms and the newest events, from an open read
    transaction on a store the reader accepted."""
    from ..store.schema import (
        LAYER_STAT_COLUMNS,
        STEP_COLUMNS,
        decode_value,
        read_int,
        read_meta,
        read_text,
        sql_int,
        sql_number,
    )

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


def middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells in the middle (``transformer_…layers.2.linear1``):
    at most 12 cells of the head and the rest of the tail kept, where layer names differ."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:max(0, width)]
    head_w = min(12, (width - 1) // 3)
    head, tail = "", ""
    for ch in text:
        if cell_len(head + ch) > head_w:
            break
        head += ch
    for ch in reversed(text):
        if cell_len(ch + tail) > width - 1 - cell_len(head):
            break
        tail = ch + tail
    return f"{head}…{tail}"


def _cell(text: str, width: int) -> str:
    """``text`` in a column of ``width`` cells: padded, or cut with an ellipsis."""
    from rich.text import Text

    t = Text(text)
    t.truncate(width, overflow="ellipsis", pad=True)
    return t.plain


#: Where the message of a two-line event starts.
_INDENT = 11


def event_lines(event: tuple, width: int) -> list:
    """One event in lines of at most ``width`` cells: step, severity, kind, the layer, then the
    message, cut at the end with an ellipsis. A layer name too long to share its line with the
    message gets the line (cut in the middle if it must be) and the message the next one."""
    from rich.cells import cell_len
    from rich.text import Text

    from ..report.html import visible

    step, sev, kind, layer, msg = event
    prefix = (f"  {step if step is not None else '-':>6} {_cell(visible(sev), 8)} "
              f"{_cell(visible(kind), 12)} ")
    name = visible(layer) if layer is not None else "(model)"
    message = visible(msg)
    rest = width - cell_len(prefix)
    style = "red" if sev in ("error", "critical") else ""
    line = Text(prefix, style=style, no_wrap=True, overflow="ellipsis")
    one_line = cell_len(name) + 1 + cell_len(message) <= rest or cell_len(name) <= max(12, rest // 2)
    line.append(name if one_line else middle(name, rest), style="bold")
    lines = [line]
    if one_line:
        line.append(" " + message)
    else:
        lines.append(Text(" " * _INDENT + message, style=style, no_wrap=True, overflow="ellipsis"))
    for t in lines:
        t.truncate(width, overflow="ellipsis")
    return lines


def render(snap: Snapshot, run_dir: str, width: int = 100):
    """A rich renderable of one :class:`Snapshot`; user strings made visible, never markup.
    The head, the layer strip and every event line fit in ``width`` cells."""
    from rich.cells import cell_len
    from rich.console import Group
    from rich.text import Text

    from ..report.html import visible
    from ..report.run_view import format_value

    head = Text("gradhealth top ", style="bold cyan")
    head.append(middle(visible(run_dir), max(16, width - 27)))
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
        st = strip(vals, max(10, width - cell_len(t.plain)))
        for ch in st:
            t.append(ch, style="bold red" if ch in "NI0" else "cyan")
        parts.append(t)
    if snap.events:
        parts.append(Text("newest events:", style="bold"))
        for e in snap.events:
            parts.extend(event_lines(e, width))
    else:
        parts.append(Text("no events", style="green"))
    return Group(*parts)


_OWNER = "gradhealth top"


def _check_args(args) -> tuple[float, float | None]:
    """``(interval, wait)`` checked: the same rule as ``gradhealth export --interval`` (a finite
    number of seconds > 0), and --wait a finite number of seconds >= 0 (or left out)."""
    from .._checks import check_int, check_real

    check_int(args.events, "events", _OWNER, min_value=0, max_value=MAX_EVENTS,
              fix=f"pass e.g. --events 6 (0 to {MAX_EVENTS}).")
    interval = check_real(args.interval, "interval", _OWNER, low=0.0, low_inclusive=False,
                          fix="pass e.g. --interval 1 (how often the store is read again, in seconds).")
    wait = None if args.wait is None else check_real(
        args.wait, "wait", _OWNER, low=0.0,
        fix="pass e.g. --wait 60 (seconds), or leave --wait out to wait until the store appears.")
    return interval, wait


def _refusal(snap: Snapshot, run_dir: str):
    """The store reader's refusal of a store that is not a readable gradhealth run (a
    StoreError with its reason, the one ``gradhealth summary`` gives), or None."""
    from ..errors import StoreError

    if snap.state == "invalid":
        return StoreError(snap.error)
    if snap.state == "creating":  # still being created, or never a gradhealth store: the reader says
        problem = store_problem(run_dir)
        if problem is not None and "locked" not in problem:
            return StoreError(problem)
    return None


def _gave_up(snap: Snapshot, run_dir: str, wait: float):
    """The StoreError once --wait ran out."""
    from .._text import quoted
    from ..errors import StoreError

    refused = _refusal(snap, run_dir)
    if refused is not None:
        return refused
    what = "no run store appeared" if snap.state == "waiting" else "the run store did not become readable"
    return StoreError(f"{what} in {quoted(run_dir)} after --wait {wait:g} s. Fix: start the training "
                      "that writes it (gradhealth.watch(..., run_dir=...) or `gradhealth run --run-dir`), "
                      "or pass a larger --wait.")


def run(args) -> int:
    from . import EXIT_OK, EXIT_USAGE
    from ._common import console

    interval, wait = _check_args(args)
    out = console()
    if args.once:
        snap = read_snapshot(args.run_dir, args.events)
        refused = _refusal(snap, args.run_dir)
        if refused is not None:
            raise refused
        out.print(render(snap, args.run_dir, out.width))
        return EXIT_OK if snap.state == "ok" else EXIT_USAGE
    return _live(args, out, max(0.05, interval), wait)


#: Seconds a store may stay half-created (no schema version yet) before the reader is asked:
#: the writer sets the version right after creating the tables, so a store still without one
#: after this long is not being created (a foreign SQLite file, or a writer that died).
CREATING_GRACE_S = 5.0


def _live(args, out, interval: float, wait: float | None) -> int:
    """Refresh until the run is closed (0), Ctrl-C (0), or the store is refused or --wait ran
    out (a StoreError: exit 2)."""
    from rich.live import Live

    from ..errors import StoreError
    from . import EXIT_OK

    started, shown = time.monotonic(), False
    creating_since: float | None = None
    refused = None
    try:
        with Live(console=out, auto_refresh=False, transient=False) as live:
            while True:
                snap = read_snapshot(args.run_dir, args.events)
                now = time.monotonic()
                creating_since = (creating_since or now) if snap.state == "creating" else None
                if creating_since is not None and now - creating_since >= CREATING_GRACE_S:
                    refused = _refusal(snap, args.run_dir)
                if snap.state == "invalid" or refused is not None:
                    break
                live.update(render(snap, args.run_dir, out.width), refresh=True)
                shown = True
                if snap.state == "ok" and snap.closed:
                    break
                if snap.state in ("waiting", "creating") and wait is not None and now - started >= wait:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if shown and not out.is_terminal:  # a file or a pipe: the last frame ends its line
            out.line()
    if snap.state == "ok":
        return EXIT_OK
    if refused is not None:
        raise refused
    if snap.state == "invalid" or wait is None:
        raise _refusal(snap, args.run_dir) or StoreError(snap.error)
    raise _gave_up(snap, args.run_dir, wait)
