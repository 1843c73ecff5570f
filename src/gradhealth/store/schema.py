"""The run store's schema: tables, columns, version, and the NaN encoding (internal).

One SQLite file, ``RUN_DIR/run.sqlite``. The tables are documented in ``docs/store.md``;
this module is the single source of truth for their columns.

Why a NaN mask: SQLite stores ``inf`` and ``-inf`` in a REAL column exactly, but it stores
a NaN as NULL, which would make "the loss was NaN" indistinguishable from "the loss was not
recorded" -- the one distinction gradhealth exists for. Each row of ``steps`` and
``layer_stats`` therefore carries ``nan_mask``, an integer whose bit *i* is set when the
*i*-th float column of :data:`STEP_COLUMNS` / :data:`LAYER_STAT_COLUMNS` was NaN. The
value column stays NULL, so plain SQL aggregates (``avg``, ``max``) skip NaNs as they
would in pandas, and a reader that knows the mask gets the NaN back.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Bumped whenever a table or column changes meaning or a table is added. Readers refuse newer
#: versions and read older ones (version 1 has no ``time_grads`` table: no time series).
SCHEMA_VERSION = 2

#: File name of the database inside a run directory.
DB_NAME = "run.sqlite"

#: ``steps`` columns other than ``step`` and ``nan_mask``: (name, kind) with kind "real" or "int".
STEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("loss", "real"),
    ("global_grad_norm", "real"),
    ("global_grad_norm_clipped", "real"),
    ("lr", "real"),
    ("skipped", "int"),
    ("nonfinite_count", "int"),
    ("time", "real"),
)

#: ``layer_stats`` columns other than ``step``, ``layer`` and ``nan_mask``.
LAYER_STAT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grad_norm", "real"),
    ("param_norm", "real"),
    ("update_ratio", "real"),
    ("nonfinite", "int"),
    ("out_grad_norm", "real"),
    ("act_std", "real"),
    ("dead_frac", "real"),
    ("sat_frac", "real"),
)

#: ``layers`` columns (``idx`` is the primary key; rows in ``layer_stats`` refer to it).
LAYER_COLUMNS = ("index", "name", "type", "n_params")

#: ``events`` columns (plus ``id``, an increasing integer that keeps the order of arrival).
EVENT_COLUMNS = ("step", "kind", "layer", "severity", "message", "evidence", "remedy", "since")


def _ddl_columns(cols: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} {'REAL' if kind == 'real' else 'INTEGER'}" for name, kind in cols)


DDL = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS layers (
    idx      INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    type     TEXT,
    n_params INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    step     INTEGER PRIMARY KEY,
    {_ddl_columns(STEP_COLUMNS)},
    nan_mask INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS layer_stats (
    step     INTEGER NOT NULL,
    layer    INTEGER NOT NULL,
    {_ddl_columns(LAYER_STAT_COLUMNS)},
    nan_mask INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (step, layer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS layer_stats_by_layer ON layer_stats (layer, step);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    step     INTEGER,
    kind     TEXT NOT NULL,
    layer    TEXT,
    severity TEXT NOT NULL,
    message  TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{{}}',
    remedy   TEXT NOT NULL DEFAULT '',
    since    INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_step ON events (step);
CREATE TABLE IF NOT EXISTS time_grads (
    step  INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    norms BLOB NOT NULL,
    PRIMARY KEY (step, layer)
) WITHOUT ROWID;
"""

#: Byte layout of ``time_grads.norms``: little-endian float64, one per time step (NaN, +Inf and
#: -Inf are kept bit for bit, so no NaN mask is needed).
TIME_GRAD_DTYPE = "<f8"

#: Most time steps one ``time_grads`` row keeps (longer series are dropped with a warning).
MAX_TIME_STEPS = 1_000_000


def encode_norms(values: Any) -> bytes:
    """A 1-D sequence of floats as the ``time_grads.norms`` BLOB.

    Raises:
        TypeError, ValueError: not a 1-D sequence of numbers, or longer than MAX_TIME_STEPS.
    """
    import numpy as np

    a = np.asarray(values, dtype=TIME_GRAD_DTYPE)
    if a.ndim != 1 or a.size > MAX_TIME_STEPS:
        raise ValueError(f"time_grad must be a 1-D sequence of at most {MAX_TIME_STEPS} numbers, "
                         f"got shape {a.shape}")
    return a.tobytes()


def decode_norms(blob: Any):
    """Inverse of :func:`encode_norms` (a float64 array), or None for a damaged value."""
    import numpy as np

    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) % 8:
        return None
    return np.frombuffer(bytes(blob), dtype=TIME_GRAD_DTYPE).astype(np.float64)


def encode_row(row: dict, cols: tuple[tuple[str, str], ...], keys: tuple[str, ...]) -> tuple[list, int]:
    """Convert the values of ``row`` for ``keys`` (a subset of ``cols``' names) to SQL values.

    Returns ``(values, nan_bits)``: NaN becomes NULL with its bit set in ``nan_bits``
    (bit positions follow ``cols``). Accepts Python numbers, numpy scalars and 0-d tensors.

    Raises:
        TypeError, ValueError: a value is not a number (the writer counts and drops the row).
    """
    values: list[int | float | None] = []
    bits = 0
    positions = _positions(cols)
    for k in keys:
        v = row[k]
        kind, pos = positions[k]
        if v is None:
            values.append(None)
            continue
        if kind == "int":
            f = float(v)
            if math.isnan(f):
                bits |= 1 << pos
                values.append(None)
            elif math.isinf(f):
                raise ValueError(f"{k} must be an integer, got {f}")
            else:
                values.append(int(f))
            continue
        f = float(v)
        if math.isnan(f):
            bits |= 1 << pos
            values.append(None)
        else:
            values.append(f)
    return values, bits


_POS_CACHE: dict[int, dict[str, tuple[str, int]]] = {}


def _positions(cols: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, int]]:
    p = _POS_CACHE.get(id(cols))
    if p is None:
        p = _POS_CACHE[id(cols)] = {name: (kind, i) for i, (name, kind) in enumerate(cols)}
    return p


# -- reading values a crafted store may hold --------------------------------------------------
# SQLite keeps whatever a writer puts in a column (text or a BLOB in a REAL column, a BLOB where
# text belongs). gradhealth never writes such values, so a store that holds them was damaged or
# crafted; readers take them as "not recorded" (numbers) or a visible placeholder (text), count
# them, and say so, instead of handing a str to code that expects a float.

def sql_number(col: str) -> str:
    """SQL for ``col`` when it holds a number (integer or real), else NULL."""
    return f"(CASE WHEN typeof({col}) IN ('integer', 'real') THEN {col} END)"


def sql_int(col: str) -> str:
    """SQL for ``col`` when it holds an integer, else NULL."""
    return f"(CASE WHEN typeof({col}) = 'integer' THEN {col} END)"


def sql_mistyped(cols) -> str:
    """SQL counting the values of ``cols`` in one row that are text or a BLOB (neither a number
    nor NULL)."""
    return " + ".join(f"(typeof({c}) IN ('text', 'blob'))" for c in cols) or "0"


def read_text(value: Any, default: str = "") -> str:
    """A text column's value as ``str``: a BLOB becomes ``<N bytes>``, NULL ``default``, a
    number its decimal form. (Control characters are kept: printing is where they are made
    visible, :func:`gradhealth._text.safe_text`.)"""
    if isinstance(value, str):
        return value
    if value is None:
        return default
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return str(value)


def read_int(value: Any) -> int | None:
    """An integer column's value, or None when it is not an integer."""
    return value if type(value) is int else None


def read_meta(conn) -> tuple[dict, int]:
    """The ``meta`` table as ``{key: value}`` (JSON values decoded, other text kept as is), and
    how many of its values were not text (read with :func:`read_text`)."""
    meta: dict = {}
    bad = 0
    for key, value in conn.execute("SELECT key, value FROM meta"):
        if not isinstance(value, str):
            bad += 1
            value = read_text(value)
        try:
            meta[read_text(key)] = json.loads(value)
        except ValueError:
            meta[read_text(key)] = value
    return meta, bad


def decode_text(raw: bytes) -> str:
    """``sqlite3.Connection.text_factory`` for stores: text that is not valid UTF-8 is decoded
    with replacement characters instead of raising ``OperationalError`` mid-query."""
    return raw.decode("utf-8", "replace")


def decode_value(v: Any, bit: int, mask: int) -> Any:
    """Inverse of the NaN encoding for one column."""
    if v is None and mask & (1 << bit):
        return math.nan
    return v


def dumps_evidence(evidence: Any) -> str:
    """Evidence as standard JSON (NaN/Inf as the strings ``"nan"``/``"inf"``/``"-inf"``)."""
    from ..events import jsonable

    try:
        return json.dumps(jsonable(evidence or {}), allow_nan=False, default=str)
    except (TypeError, ValueError):
        return json.dumps({"unserialisable": repr(evidence)[:1000]})


_NONFINITE_STRINGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


#: Evidence written by gradhealth is a few levels deep and at most a few kB; a store that holds
#: more was not written by it, and is shown as unparsed text instead of crashing a reader.
MAX_EVIDENCE_CHARS = 1_000_000
MAX_EVIDENCE_DEPTH = 32


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests lists/dicts deeper than ``limit`` (iterative: no recursion)."""
    stack = [(obj, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            if d >= limit:
                return True
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return False


def loads_evidence(text: str | None) -> dict:
    """Inverse of :func:`dumps_evidence`: the strings ``"nan"``, ``"inf"``, ``"-inf"``
    become floats again (evidence is numbers by contract)."""
    if not text:
        return {}
    if not isinstance(text, str):
        return {"unparsed": repr(text)[:200]}
    if len(text) > MAX_EVIDENCE_CHARS:
        return {"unparsed": text[:200] + "...", "truncated_chars": len(text)}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):   # not JSON, or nested deeper than the parser goes
        return {"unparsed": text[:200] + ("..." if len(text) > 200 else "")}
    if _depth_exceeds(obj, MAX_EVIDENCE_DEPTH):
        return {"unparsed": text[:200] + ("..." if len(text) > 200 else ""), "too_deep": True}

    def back(x):
        if isinstance(x, str):
            return _NONFINITE_STRINGS.get(x, x)
        if isinstance(x, dict):
            return {k: back(v) for k, v in x.items()}
        if isinstance(x, list):
            return [back(v) for v in x]
        return x

    return back(obj)
