"""Reading a run directory back: :func:`load_run` -> :class:`Run`; exporting it
(:func:`to_pandas` DataFrames, :func:`to_records` JSON-safe plain data).

The reader opens the database read-only, in one read transaction, so it sees a consistent
snapshot even while the training process is still writing (WAL mode), and it never writes
to the run it reads.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError, StoreError
from ..events import SEVERITIES, Event, jsonable
from .schema import (
    DB_NAME,
    LAYER_STAT_COLUMNS,
    SCHEMA_VERSION,
    STEP_COLUMNS,
    decode_norms,
    decode_text,
    decode_value,
    loads_evidence,
    read_int,
    read_meta,
    read_text,
    sql_int,
    sql_mistyped,
    sql_number,
)

__all__ = ["Run", "LayerColumns", "load_run", "to_pandas", "to_records"]

_DAMAGED_FIX = (" Fix: check the path; a store damaged by a crash or copied while it was being written "
                "cannot be repaired by gradhealth (`sqlite3 run.sqlite .recover` may save its rows).")

_LAYER_FIELDS = tuple(c for c, _ in LAYER_STAT_COLUMNS)


@dataclass
class LayerColumns:
    """The ``layer_stats`` table column by column, as NumPy arrays (one entry per stored row,
    in ``(step, layer)`` order): what the report reads for large runs instead of one dict per row.

    Attributes:
        step, layer: int64 arrays, the row keys.
        values: field -> float64 array; NaN where the value was NaN *or* not recorded.
        recorded: field -> bool array; False where the value was not recorded (NULL).
        sampled: see below (the rows of some steps only).
    """

    step: Any
    layer: Any
    values: dict = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)
    #: ``(steps read in full, logged steps stored)`` when only some steps' rows were read
    #: (``load_run(..., max_steps=N)``), else None.
    sampled: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.step.size)

    @classmethod
    def from_rows(cls, rows: list[dict], fields: tuple[str, ...] = _LAYER_FIELDS) -> "LayerColumns":
        """The columns of ``Run.layer_stats``-style dict rows (the slow path, and the oracle)."""
        import numpy as np

        n = len(rows)
        out = cls(np.fromiter((r["step"] for r in rows), dtype=np.int64, count=n),
                  np.fromiter((r["layer"] for r in rows), dtype=np.int64, count=n))
        for f in fields:
            vals = [r.get(f) for r in rows]
            out.recorded[f] = np.fromiter((v is not None for v in vals), dtype=bool, count=n)
            out.values[f] = np.fromiter((np.nan if v is None else v for v in vals), dtype=np.float64, count=n)
        return out


@dataclass
class Run:
    """A stored run, as plain Python data.

    Attributes:
        run_dir: the run directory.
        meta: metadata (``created_at``, ``closed_at`` once the writer closed, ``schema_version``,
            ``gradhealth_version`` and whatever the watcher recorded).
        layers: ``[{"index", "name", "type", "n_params"}, ...]`` in index order.
        steps: one dict per recorded step, every column of the ``steps`` table present
            (``None`` = not recorded, ``nan`` = recorded as NaN), in step order.
        layer_stats: one dict per (step, layer) row; ``layer`` is the index into ``layers``
            (empty when loaded with ``layer_stats="columns"``: see ``columns``).
        events: :class:`~gradhealth.events.Event` objects in the order they were written.
        time_grads: per-time-step gradient norms of recurrent layers, one dict
            ``{"step", "layer", "norms"}`` per (detail step, layer), ``norms`` a float64 array
            (NaN/Inf kept); empty for runs of schema version 1.
        columns: the per-layer rows as :class:`LayerColumns` (``load_run(...,
            layer_stats="columns")``), or None.
        notes: what could not be read, said plainly (e.g. damaged time series).
    """

    run_dir: Path
    meta: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    layer_stats: list[dict] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    time_grads: list[dict] = field(default_factory=list)
    columns: LayerColumns | None = None
    notes: list[str] = field(default_factory=list)

    def layer_columns(self, fields: tuple[str, ...] | None = None) -> LayerColumns:
        """The per-layer rows as :class:`LayerColumns`: the columns read from SQLite when the
        run was loaded with ``layer_stats="columns"``, else built from ``layer_stats``."""
        if self.columns is not None:
            missing = [f for f in (fields or ()) if f not in self.columns.values]
            if missing:
                raise ParameterError("fields", "Run.layer_columns", "fields that were loaded ("
                                     + ", ".join(self.columns.values) + ")", missing,
                                     f"load the run with load_run(..., fields={tuple(fields or ())!r}).")
            return self.columns
        return LayerColumns.from_rows(self.layer_stats, tuple(fields or _LAYER_FIELDS))

    def time_series(self, name: str | int):
        """Per-time-step gradient norms of one recurrent layer over the detail steps.

        Returns:
            ``(steps, norms)``: an int64 array of steps and a list of float64 arrays (one per
            step, time step 0 first; lengths may differ between steps). Empty when the run
            recorded none for that layer (or is of schema version 1).
        """
        import numpy as np

        idx = self._layer_indices(name)
        rows = [r for r in self.time_grads if r["layer"] in idx]
        return np.array([r["step"] for r in rows], dtype=np.int64), [r["norms"] for r in rows]

    @property
    def finished(self) -> bool:
        """True when the writer closed cleanly (``closed_at`` in meta); False while the run
        is still being written, or if the writing process died."""
        return "closed_at" in self.meta

    @property
    def layer_names(self) -> dict[int, str]:
        """Layer index -> qualified name."""
        return {d["index"]: d["name"] for d in self.layers}

    def _layer_indices(self, layer: str | int) -> set[int]:
        if isinstance(layer, int) and not isinstance(layer, bool):
            idx = {layer} if any(d["index"] == layer for d in self.layers) else set()
        else:
            idx = {d["index"] for d in self.layers if d["name"] == layer}
        if not idx:
            from ..errors import ParameterError

            names = [d["name"] for d in self.layers]
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise ParameterError("name", "Run.layer_series", "a layer name or index of this run",
                                 layer, f"use one of: {shown or '(no layers recorded)'}")
        return idx

    def layer_series(self, name: str | int, field: str):
        """Steps and values of one per-layer statistic, as two NumPy arrays.

        Args:
            name: the layer's qualified name (or its index).
            field: a ``layer_stats`` column, e.g. ``"grad_norm"``.

        Returns:
            ``(steps, values)``: int64 and float64 arrays, in step order. Steps where the
            statistic was not recorded are left out; NaN values are kept.
        """
        import numpy as np

        _check_field(field, LAYER_STAT_COLUMNS, "Run.layer_series")
        idx = self._layer_indices(name)
        pairs = sorted((r["step"], r[field]) for r in self.layer_stats
                       if r["layer"] in idx and r[field] is not None)
        return (np.array([p[0] for p in pairs], dtype=np.int64),
                np.array([p[1] for p in pairs], dtype=np.float64))

    def step_series(self, field: str):
        """Steps and values of one ``steps`` column (``"loss"``, ``"global_grad_norm"``, ...),
        as two NumPy arrays; steps where it was not recorded are left out, NaN kept."""
        import numpy as np

        _check_field(field, STEP_COLUMNS, "Run.step_series")
        pairs = [(r["step"], r[field]) for r in self.steps if r[field] is not None]
        return (np.array([p[0] for p in pairs], dtype=np.int64),
                np.array([p[1] for p in pairs], dtype=np.float64))

    def to_pandas(self) -> dict:
        """The run as DataFrames: ``{"meta", "layers", "steps", "layer_stats", "events"}``.

        ``layer_stats`` gains a ``layer_name`` column. Needs pandas
        (``pip install 'gradhealth[pandas]'``).
        """
        return to_pandas(self)

    def __repr__(self) -> str:
        return (f"Run({str(self.run_dir)!r}, {len(self.layers)} layers, {len(self.steps)} steps, "
                f"{len(self.layer_stats)} layer rows, {len(self.events)} events, "
                f"{'finished' if self.finished else 'not finished'})")


def _check_field(field: str, cols, owner: str) -> None:
    names = [c for c, _ in cols]
    if field not in names:
        from ..errors import ParameterError

        raise ParameterError("field", owner, "one of " + ", ".join(names), field,
                             f"pass e.g. field={names[0]!r}.")


def _db_path(run_dir: str | os.PathLike, owner: str = "load_run") -> tuple[Path, Path]:
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ParameterError("run_dir", owner, "a path (str or os.PathLike) to a run directory or its "
                             f"{DB_NAME}", run_dir, "pass e.g. load_run('runs/exp1').")
    p = Path(run_dir)
    if p.is_file() and p.name == DB_NAME:
        return p.parent, p
    if not p.exists():
        raise StoreError(f"Run directory {str(p)!r} does not exist. Fix: pass the run_dir that "
                         "gradhealth.watch(..., run_dir=...) or `gradhealth run --run-dir` wrote.")
    if not p.is_dir():
        raise StoreError(f"{str(p)!r} is not a run directory (it is a file). Fix: pass the "
                         f"directory that holds {DB_NAME}.")
    db = p / DB_NAME
    if not db.is_file():
        raise StoreError(f"{str(p)!r} is not a gradhealth run: it has no {DB_NAME}. Fix: pass "
                         "the run_dir that gradhealth.watch or `gradhealth run` wrote.")
    return p, db


def _connect(db: Path) -> sqlite3.Connection:
    # Read-write without create first: such a handle can rebuild the WAL index a crashed writer
    # left behind, and the last one to close tidies up the -wal/-shm files (a read-only handle
    # would leave them). It only ever reads. Read-only for runs on read-only media.
    last: Exception | None = None
    for mode in ("rw", "ro"):
        try:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode={mode}", uri=True, timeout=5.0)
            conn.text_factory = decode_text
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            last = exc
    raise StoreError(f"{str(db)!r} cannot be read as a gradhealth run ({last})." + _DAMAGED_FIX)


def load_run(run_dir: str | os.PathLike, *, layer_stats: bool | str = True,
             fields: tuple[str, ...] | None = None, max_steps: int | None = None,
             after_step: int | None = None) -> Run:
    """Load a run directory (finished, crashed, or still being written).

    Args:
        run_dir: the run directory (or its ``run.sqlite``).
        layer_stats: ``True``: the per-layer rows as dicts (``Run.layer_stats``); ``False``:
            skip them (the biggest table); ``"columns"``: read them column by column into
            NumPy arrays (``Run.columns``), the fast path for large runs.
        fields: with ``"columns"``, the ``layer_stats`` columns to read (default: all).
        max_steps: with ``"columns"``, for drawing a huge run: when more logged steps than this
            are stored, read the rows of ``max_steps`` evenly spaced steps (the first and the
            last included) plus every row in which a read field is NaN, infinite or <= 0, and
            every row of a field recorded on detail steps only (parameter norms, update
            ratios, output gradients, activation statistics): counts of special values and
            first non-finite steps stay exact. ``Run.columns.sampled`` then says how many
            steps were read. SQLite hands Python about a million values a second; this reads
            a few hundred thousand rows whatever the run's length.
        after_step: read only the steps after this one (their ``steps`` rows, per-layer rows
            and time series); the metadata, layers and events in full. For following a run
            that is still being written without reading it all again (the live exports).

    Raises:
        StoreError: the directory is missing, is not a gradhealth run, cannot be read, or was
            written by a newer gradhealth (newer schema version).
        ParameterError: ``run_dir`` is not a path (``str`` or ``os.PathLike``).
    """
    root, db = _db_path(run_dir)
    conn = _connect(db)
    try:
        try:
            conn.execute("BEGIN")  # one snapshot for every table
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{str(db)!r} is not a gradhealth run ({exc}).") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{str(root)!r} was written with run-store schema version {version}; "
                             f"this gradhealth reads up to version {SCHEMA_VERSION}. Fix: upgrade "
                             "gradhealth (pip install -U gradhealth).")
        needed = {"meta", "layers", "steps", "layer_stats", "events"}
        if version < 1 or not needed <= tables:
            raise StoreError(f"{str(db)!r} is an SQLite file but not a gradhealth run (schema "
                             f"version {version}, tables {sorted(tables)}).")
        run = Run(run_dir=root)
        _read_tables(conn, run, tables, layer_stats, fields, max_steps, after_step)
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{str(db)!r} cannot be read as a gradhealth run ({exc})." + _DAMAGED_FIX) from None
    finally:
        conn.close()
    return run


def _read_tables(conn, run: Run, tables: set, layer_stats, fields, max_steps, after_step) -> None:
    """Fill ``run`` from an open read transaction. Values of the wrong type (a crafted or
    damaged store) are read as not recorded, or shown as a placeholder, and counted in
    ``run.notes``; rows without a usable key are left out and counted too."""
    damage = _Damage()
    meta, damage.values = read_meta(conn)
    run.meta.update(meta)
    for i, n, t, p in conn.execute("SELECT idx, name, type, n_params FROM layers ORDER BY idx"):
        damage.values += (not isinstance(n, str)) + (not isinstance(t, _TEXT_TYPES)) + (
            p is not None and type(p) is not int)
        run.layers.append({"index": i, "name": read_text(n), "type": None if t is None else read_text(t),
                           "n_params": read_int(p)})
    after = _check_after(after_step)
    run.steps = _rows(conn, "steps", ("step",), STEP_COLUMNS, "step", after, damage)
    if layer_stats == "columns":
        run.columns = _columns(conn, _check_fields(fields), _check_max_steps(max_steps), damage)
    elif layer_stats:
        run.layer_stats = _rows(conn, "layer_stats", ("step", "layer"), LAYER_STAT_COLUMNS,
                                "step, layer", after, damage)
    if "time_grads" in tables:
        run.time_grads, bad = _time_grads(conn, after)
        if bad:
            run.notes.append(f"{bad} per-time-step gradient row(s) could not be decoded and are "
                             "left out")
    run.events = [_event(row, damage) for row in conn.execute(
        "SELECT step, kind, layer, severity, message, evidence, remedy, since FROM events ORDER BY id")]
    run.notes.extend(damage.notes())


@dataclass
class _Damage:
    """What a crafted or damaged store held that the reader could not take as it is."""

    values: int = 0       # values of the wrong type, read as not recorded / a placeholder
    rows: int = 0         # rows without an integer key, left out
    severities: int = 0   # events whose severity is not one of SEVERITIES, read as "error"

    def notes(self) -> list[str]:
        out = []
        if self.values:
            out.append(f"{self.values} stored value(s) had the wrong type (text or bytes where a number "
                       "belongs, or the reverse) and are read as not recorded")
        if self.rows:
            out.append(f"{self.rows} stored row(s) had no integer step or layer and are left out")
        if self.severities:
            out.append(f"{self.severities} event(s) had an unknown severity and are shown as errors")
        return out


_TEXT_TYPES = (str, type(None))


def _event(row, damage: _Damage) -> Event:
    step, kind, layer, sev, msg, ev, remedy, since = row
    typed = (type(step) is int or step is None, isinstance(kind, str), isinstance(layer, _TEXT_TYPES),
             isinstance(sev, str), isinstance(msg, str), isinstance(ev, _TEXT_TYPES),
             isinstance(remedy, _TEXT_TYPES), type(since) is int or since is None)
    damage.values += typed.count(False)
    severity = read_text(sev)
    if severity not in SEVERITIES:   # shown, not hidden: an unknown severity counts as an error
        damage.severities += 1
        severity = "error"
    return Event(step=read_int(step), kind=read_text(kind), layer=None if layer is None else read_text(layer),
                 severity=severity, message=read_text(msg),
                 evidence=loads_evidence(ev if isinstance(ev, str) else None), remedy=read_text(remedy),
                 since=read_int(since))


def _check_fields(fields) -> tuple[str, ...]:
    if fields is None:
        return _LAYER_FIELDS
    got = tuple(fields) if isinstance(fields, (list, tuple)) else (fields,)
    bad = [f for f in got if f not in _LAYER_FIELDS]
    if bad or not got:
        raise ParameterError("fields", "load_run", "a tuple of layer_stats columns ("
                             + ", ".join(_LAYER_FIELDS) + ")", fields, "pass e.g. fields=('grad_norm',).")
    return got


#: fields the watcher records on detail steps only: read in full even when sampling
_DETAIL_FIELDS = ("param_norm", "update_ratio", "out_grad_norm", "act_std", "dead_frac", "sat_frac")


def _check_max_steps(max_steps) -> int | None:
    if max_steps is None:
        return None
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2:
        raise ParameterError("max_steps", "load_run", "None or an integer >= 2", max_steps,
                             "pass e.g. max_steps=2000 (or None to read every row).")
    return max_steps


def _sample_where(conn, fields: tuple[str, ...], max_steps: int | None) -> tuple[str, tuple, tuple | None]:
    """``(WHERE clause, its parameters, (steps read, steps stored))`` of a sampled read, or no
    clause when every row is to be read."""
    if max_steps is None:
        return "", (), None
    steps = [r[0] for r in conn.execute("SELECT step FROM steps ORDER BY step")]
    if len(steps) <= max_steps:
        return "", (), None
    idx = sorted({round(i * (len(steps) - 1) / (max_steps - 1)) for i in range(max_steps)})
    picked = [steps[i] for i in idx]
    pos = {c: i for i, c in enumerate(_LAYER_FIELDS)}
    special = [f"{f} > 0" if f == "nonfinite" else       # a count: special when not 0
               f"(({f} IS NULL AND (nan_mask >> {pos[f]}) & 1) OR {f} <= 0 OR {f} >= 9e999)"
               for f in fields]
    special += [f"{f} IS NOT NULL" for f in fields if f in _DETAIL_FIELDS]
    where = (f" WHERE step IN ({', '.join('?' * len(picked))})"
             + (" OR " + " OR ".join(special) if special else ""))
    return where, tuple(picked), (len(picked), len(steps))


def _columns(conn, fields: tuple[str, ...], max_steps: int | None = None,
             damage: _Damage | None = None) -> LayerColumns:
    """``layer_stats`` straight into arrays (all rows, or a sample: :func:`load_run`)."""
    import numpy as np

    pos = {c: i for i, c in enumerate(_LAYER_FIELDS)}
    where, params, sampled = _sample_where(conn, fields, max_steps)
    try:   # the fast query; a value of the wrong type (a crafted store) fails the float conversion
        a = _column_matrix(conn, fields, where, params, guarded=False)
    except (TypeError, ValueError):
        a = _column_matrix(conn, fields, where, params, guarded=True)
    # keys that are not integers: -1 from the guarded query; a REAL key (2.5) from either
    keyed = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 0] == np.floor(a[:, 0])) & (a[:, 1] == np.floor(a[:, 1]))
    if damage is not None:
        damage.values += int(a[keyed, -3].sum())
        damage.rows += int((~keyed).sum())
    a = a[keyed]
    mask = a[:, -1].astype(np.int64)
    null_bits = a[:, -2].astype(np.int64)
    out = LayerColumns(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64))
    for k, f in enumerate(fields):
        null = ((null_bits >> k) & 1).astype(bool)
        is_nan = null & ((mask >> pos[f]) & 1).astype(bool)
        out.recorded[f] = ~null | is_nan
        out.values[f] = np.where(null, np.nan, a[:, 2 + k])
    out.sampled = sampled
    return out


def _column_matrix(conn, fields: tuple[str, ...], where: str, params: tuple, guarded: bool):
    """The selected ``layer_stats`` rows as one float64 matrix: step, layer, one value per field
    (0 where NULL), the number of mistyped values, the NULL bits, the NaN mask.

    One value per field and one integer whose bit k says field k is NULL: a row is all numbers
    (no None), so the rows become one matrix without a dict per row. ``guarded`` reads keys and
    values that are not numbers (a crafted store) as -1 / NULL and counts them (about 1.8x
    slower, so it is only the fallback).
    """
    import numpy as np

    num, key = (sql_number, sql_int) if guarded else ((lambda c: c), (lambda c: c))
    sel = "".join(f"ifnull({num(f)}, 0.0), " for f in fields)
    nulls = " | ".join(f"(({num(f)} IS NULL) << {k})" for k, f in enumerate(fields)) or "0"
    bad = sql_mistyped((*fields, "nan_mask")) if guarded else "0"
    cur = conn.execute(f"SELECT ifnull({key('step')}, -1), ifnull({key('layer')}, -1), {sel}{bad}, {nulls}, "
                       f"ifnull({key('nan_mask')}, 0) FROM layer_stats{where} ORDER BY step, layer", params)
    chunks = []
    while True:
        part = cur.fetchmany(65536)
        if not part:
            break
        chunks.append(np.array(part, dtype=np.float64))
    return np.concatenate(chunks) if chunks else np.zeros((0, 5 + len(fields)))


def _time_grads(conn, after: int | None = None) -> tuple[list[dict], int]:
    out, bad = [], 0
    where, params = _after_where(after)
    for step, layer, blob in conn.execute(f"SELECT step, layer, norms FROM time_grads{where} ORDER BY step, layer",
                                          params):
        norms = decode_norms(blob)
        if norms is None or type(step) is not int or type(layer) is not int:
            bad += 1
            continue
        out.append({"step": step, "layer": layer, "norms": norms})
    return out, bad


def _after_where(after: int | None) -> tuple[str, tuple]:
    return ("", ()) if after is None else (" WHERE step > ?", (after,))


def _check_after(after_step) -> int | None:
    if after_step is None:
        return None
    if isinstance(after_step, bool) or not isinstance(after_step, int):
        raise ParameterError("after_step", "load_run", "None or an integer step", after_step,
                             "pass the last step already read, e.g. after_step=99.")
    return after_step


def _rows(conn, table: str, keys: tuple[str, ...], cols, order: str,
          after: int | None = None, damage: _Damage | None = None) -> list[dict[str, Any]]:
    names = [c for c, _ in cols]
    where, params = _after_where(after)
    every = (*keys, *names, "nan_mask")
    # the guarded SQL (values of the wrong type read as NULL, and counted) costs about 45% more
    # than the plain one: use it only when one such value is there (the check costs about 12%)
    odd = " OR ".join([*(f"typeof({k}) != 'integer'" for k in keys),
                       *(f"typeof({c}) IN ('text', 'blob')" for c in (*names, "nan_mask"))])
    glue = " AND " if where else " WHERE "
    guarded = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table}{where}{glue}({odd}))", params).fetchone()[0]
    num, key = (sql_number, sql_int) if guarded else ((lambda c: c), (lambda c: c))
    picked = (*(key(k) for k in keys), *(num(c) for c in names), f"ifnull({key('nan_mask')}, 0)",
              sql_mistyped(every) if guarded else "0")
    sql = f"SELECT {', '.join(picked)} FROM {table}{where} ORDER BY {order}"
    nk = len(keys)
    out = []
    bad_values = bad_rows = 0
    for r in conn.execute(sql, params):
        mask, bad = r[-2], r[-1]
        if guarded and None in r[:nk]:   # a key that is not an integer (text, a BLOB, 2.5, NULL)
            bad_rows += 1
            continue
        bad_values += bad
        d = dict(zip(keys, r[:nk]))
        if mask:
            for i, name in enumerate(names):
                d[name] = decode_value(r[nk + i], i, mask)
        else:
            d.update(zip(names, r[nk:-2]))
        out.append(d)
    if damage is not None:
        damage.values += bad_values
        damage.rows += bad_rows
    return out


# -- exporters --------------------------------------------------------------------------------

def to_pandas(run: Run) -> dict:
    """The run as ``{"meta", "layers", "steps", "layer_stats", "events"}`` DataFrames.

    ``meta`` has columns ``key``, ``value``; ``layer_stats`` gains ``layer_name``; ``events``
    keeps ``evidence`` as dicts. NaN stays NaN, a value never recorded is NaN / None too
    (pandas has one missing marker for floats).

    Raises:
        ImportError: pandas is not installed (with the command that installs it).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("Run.to_pandas needs pandas, which is not installed. "
                          "Fix: pip install 'gradhealth[pandas]' (or pip install pandas).") from None

    def frame(rows, keys, cols):
        # Typed columns: float64 (missing -> NaN) and nullable Int64, never 'object'.
        df = pd.DataFrame(rows, columns=[*keys, *(c for c, _ in cols)])
        types = {k: "int64" for k in keys}
        types.update({c: ("float64" if kind == "real" else "Int64") for c, kind in cols})
        return df.astype(types)

    stats = frame(run.layer_stats, ("step", "layer"), LAYER_STAT_COLUMNS)
    stats.insert(2, "layer_name", stats["layer"].map(run.layer_names))
    return {
        "meta": pd.DataFrame(sorted(run.meta.items()), columns=["key", "value"]),
        "layers": pd.DataFrame(run.layers, columns=["index", "name", "type", "n_params"]),
        "steps": frame(run.steps, ("step",), STEP_COLUMNS),
        "layer_stats": stats,
        "events": pd.DataFrame([e.to_dict() | {"evidence": e.evidence} for e in run.events],
                               columns=["step", "kind", "layer", "severity", "message",
                                        "evidence", "remedy", "since"]),
    }


def to_records(run: Run) -> dict:
    """The whole run as JSON-safe plain data (NaN/Inf as strings, as in ``Event.to_dict``)."""
    return jsonable({
        "run_dir": str(run.run_dir),
        "meta": run.meta,
        "layers": run.layers,
        "steps": run.steps,
        "layer_stats": run.layer_stats,
        "events": [e.to_dict() for e in run.events],
        "time_grads": [{"step": r["step"], "layer": r["layer"], "norms": [float(v) for v in r["norms"]]}
                       for r in run.time_grads],
    })
