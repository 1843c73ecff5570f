"""The run store's writer: batched SQLite writes on a background thread.

The training thread only *enqueues* (a few hundred nanoseconds per call); a daemon thread
turns the queue into one SQLite transaction every ``flush_every`` seconds. SQLite runs in
WAL mode with ``synchronous=NORMAL``: a reader can open the database while training writes,
and a crash of the writing process (even ``os._exit`` or SIGKILL) loses at most the last
uncommitted batch, never the file.

The writer never raises into training. When the run directory cannot be created or written,
or the disk fills up, it emits **one** :class:`StoreWarning` (in the training thread, at its
next call), keeps every event it could not write in :attr:`RunStore.pending_events`, counts
the step and layer rows it had to drop in :attr:`RunStore.dropped_rows`, and carries on.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import sqlite3
import threading
import time
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Iterable

from .._checks import check_choice, check_real
from ..errors import StoreError
from ..events import Event, jsonable
from .blocks import LayerBlock
from .schema import (
    DB_NAME,
    DDL,
    LAYER_STAT_COLUMNS,
    SCHEMA_VERSION,
    STEP_COLUMNS,
    dumps_evidence,
    encode_norms,
    encode_row,
)

__all__ = ["RunStore", "StoreWarning"]

_TIME_GRADS_SQL = "INSERT OR REPLACE INTO time_grads (step, layer, norms) VALUES (?, ?, ?)"

_OWNER = "RunStore"
_STEP_NAMES = frozenset(c for c, _ in STEP_COLUMNS)
_LAYER_STAT_NAMES = frozenset(c for c, _ in LAYER_STAT_COLUMNS)
_LAYER_STAT_ORDER = tuple(c for c, _ in LAYER_STAT_COLUMNS)
_TIME_KEY = "time_grad"   # key of a layer row that carries its per-time-step gradient norms


#: How long a locked database is retried (seconds) before the store stops writing.
LOCK_RETRY_S = 120.0


class StoreWarning(UserWarning):
    """The run store could not write; training goes on and events are kept in memory."""


# Stores still open at interpreter exit are flushed and closed, so that a script that forgets
# ``close()`` (or dies by an exception) still leaves its last batch on disk.
_OPEN_STORES: "weakref.WeakSet[RunStore]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:  # pragma: no cover - exercised by the subprocess tests
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except Exception:
            pass


class RunStore:
    """Append-only writer of one run directory (``RUN_DIR/run.sqlite``).

    Args:
        run_dir: the run directory; created (with parents) if missing.
        flush_every: seconds between commits of the background writer (default 0.5).
            ``flush()`` and ``close()`` commit at once. A crash loses at most this much.
        mode: ``"w"`` starts a fresh run (an existing ``run.sqlite`` in ``run_dir`` is
            replaced); ``"a"`` appends to an existing run (resuming), creating it if missing.

    Every ``append_*`` method only enqueues; rows are dicts of plain numbers (Python,
    NumPy or 0-d tensor scalars), handed over to the store (do not mutate them afterwards).
    Missing keys are stored as NULL; NaN, ``inf`` and ``-inf`` round-trip exactly. A row
    appended twice for the same step (and layer) is merged: the keys of the later row
    overwrite, the others stay.

    Attributes:
        run_dir, path: the directory and the database file.
        error: ``None`` while writing works, else why it stopped (the warning's text).
        pending_events: events that could not be written (kept so nothing is lost).
        dropped_rows: step / layer rows that could not be written.

    Example:
        >>> with RunStore("runs/exp1") as store:                       # doctest: +SKIP
        ...     store.write_layers([{"index": 0, "name": "fc1", "type": "Linear", "n_params": 80}])
        ...     store.append_steps([{"step": 0, "loss": 2.3, "global_grad_norm": 1.1}])
    """

    #: How long one write waits for another process's lock (SQLite busy_timeout).
    BUSY_TIMEOUT_MS = 5000

    def __init__(self, run_dir: str | os.PathLike, *, flush_every: float = 0.5, mode: str = "w"):
        self.flush_every = check_real(flush_every, "flush_every", _OWNER, low=0.0,
                                      fix="pass flush_every=0.5 (seconds between commits).")
        self.mode = check_choice(mode, "mode", _OWNER, ("w", "a"),
                                 fix="pass mode='w' for a new run or mode='a' to append to one.")
        if run_dir is None or (isinstance(run_dir, str) and not run_dir.strip()):
            from ..errors import ParameterError

            raise ParameterError("run_dir", _OWNER, "a directory path", run_dir,
                                 "pass run_dir='runs/exp1' (it is created if missing).")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.error: str | None = None
        self.pending_events: list[Event] = []
        self.dropped_rows = 0
        self._notes: deque[str] = deque()       # warnings to emit in the caller's thread
        self._noted: set[str] = set()            # keys of notes already queued (once each)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sql_cache: dict[tuple, str] = {}
        self._locked_since: float | None = None
        try:
            conn = self._open()
        except (OSError, sqlite3.Error, StoreError) as exc:
            self._fail(exc, during="opening")
            self._emit_notes(stacklevel=3)
            return
        self._thread = threading.Thread(target=self._run, args=(conn,), daemon=True,
                                        name=f"gradhealth-store:{self.run_dir.name}")
        self._thread.start()
        _OPEN_STORES.add(self)

    # ------------------------------------------------------------------ public API (caller)

    @property
    def ok(self) -> bool:
        """True while the store writes to disk."""
        return self.error is None

    def write_meta(self, meta: dict) -> None:
        """Record run metadata (merged key by key; values must be JSON-able)."""
        self._put("meta", dict(meta))

    def write_layers(self, layers: Iterable[dict]) -> None:
        """Record the layer table: dicts with ``index``, ``name``, ``type``, ``n_params``.

        A layer written again under the same ``index`` is replaced (a model that changed
        structure mid-run writes its new layers under new indices).
        """
        self._put("layers", list(layers))

    def append_steps(self, rows: Iterable[dict]) -> None:
        """Append per-step rows; keys ``step`` (required), ``loss``, ``global_grad_norm``,
        ``global_grad_norm_clipped``, ``lr``, ``skipped``, ``nonfinite_count``, ``time``."""
        self._put("steps", rows if isinstance(rows, list) else list(rows))

    def append_layer_stats(self, rows: Iterable[dict]) -> None:
        """Append per-layer rows; keys ``step`` and ``layer`` (the layer's index, required),
        ``grad_norm``, ``param_norm``, ``update_ratio``, ``nonfinite``, ``out_grad_norm``,
        ``act_std``, ``dead_frac``, ``sat_frac``; and, for a recurrent layer, ``time_grad``: the
        gradient norm at each time step (a 1-D sequence of floats, NaN/Inf kept), which goes
        to the ``time_grads`` table."""
        self._put("layer_stats", rows if isinstance(rows, list) else list(rows))

    def append_layer_block(self, block: LayerBlock) -> None:
        """Append the layer rows of a :class:`~gradhealth.store.blocks.LayerBlock` (the
        watcher's path: the same rows as :meth:`append_layer_stats` with one vectorised
        encoding instead of one dict per layer)."""
        if len(block):
            self._put("layer_block", block)

    def append_events(self, events: Iterable[Event]) -> None:
        """Append :class:`~gradhealth.events.Event` objects (order is kept)."""
        self._put("events", list(events))

    def truncate(self, from_step: int) -> None:
        """Delete the steps, layer rows, time series and events of step ``from_step`` and later
        (in order with the other writes): a run resumed from a checkpoint at ``from_step``
        re-does those steps, so what an interrupted process recorded after its last
        checkpoint is replaced, not doubled."""
        self._put("truncate", int(from_step))

    def flush(self, timeout: float = 30.0) -> bool:
        """Commit everything enqueued so far; returns False if that did not happen in time
        or the store is not writing (then see :attr:`error`)."""
        self._emit_notes()
        if self._thread is None or self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._q.put(("flush", done))
        ok = self._wait(done, timeout)
        self._emit_notes()
        return ok and self.error is None

    def _wait(self, done: threading.Event, timeout: float) -> bool:
        """Wait for the writer to set ``done``, but not for a thread that died meanwhile."""
        deadline = time.monotonic() + timeout
        while not done.wait(min(0.05, max(deadline - time.monotonic(), 0.0))):
            if self._thread is None or not self._thread.is_alive():
                if self.error is None:
                    self._fail(RuntimeError("the background writer thread died"), during="writing")
                return False
            if time.monotonic() >= deadline:
                return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Commit, record ``closed_at`` in the metadata, and stop the writer. Idempotent."""
        if self._closed:
            self._emit_notes()
            return
        if self._thread is not None and self._thread.is_alive():
            self._q.put(("meta", {"closed_at": time.time()}))
            done = threading.Event()
            self._q.put(("close", done))
            self._closed = True
            self._wait(done, timeout)
            self._thread.join(timeout=1.0)
        self._closed = True
        _OPEN_STORES.discard(self)
        self._emit_notes()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writing" if self.ok else f"failed: {self.error}")
        return f"RunStore({str(self.run_dir)!r}, {state})"

    # ------------------------------------------------------------------ internals (caller)

    def _put(self, op: str, payload: Any) -> None:
        if self._notes:
            self._emit_notes()
        if self._thread is not None and not self._closed and self.error is None and not self._thread.is_alive():
            self._fail(RuntimeError("the background writer thread died"), during="writing")
        if self.error is not None or self._closed or self._thread is None:
            if self._closed and self.error is None:
                self._note("closed", f"gradhealth run store {self.run_dir}: written to after "
                           "close(); the data is kept in memory only.")
            self._keep_in_memory(op, payload)
            self._emit_notes()
            return
        self._q.put((op, payload))

    def _emit_notes(self, stacklevel: int = 4) -> None:
        while self._notes:
            try:
                msg = self._notes.popleft()
            except IndexError:
                break
            warnings.warn(msg, StoreWarning, stacklevel=stacklevel)

    def _note(self, key: str, msg: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self._notes.append(msg)

    def _keep_in_memory(self, op: str, payload: Any) -> None:
        if op == "events":
            self.pending_events.extend(payload)
        elif op in ("steps", "layer_stats", "layer_block"):
            self.dropped_rows += len(payload)

    def _fail(self, exc: BaseException, during: str) -> None:
        if self.error is not None:
            return
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        self.error = (f"gradhealth could not {'open' if during == 'opening' else 'write'} the run "
                      f"store {self.path} ({type(exc).__name__}: {reason}). Training continues; "
                      "events are kept in memory (RunStore.pending_events, watcher.events) and "
                      "step statistics are no longer saved. Fix: choose a writable run_dir "
                      "with free space.")
        self._note("fail", self.error)

    # ------------------------------------------------------------------ internals (writer)

    def _open(self) -> sqlite3.Connection:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.mode == "w":
            for suffix in ("", "-wal", "-shm", "-journal"):
                p = self.run_dir / (DB_NAME + suffix)
                if p.exists():
                    p.unlink()
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_MS)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this "
                                 f"gradhealth writes ({SCHEMA_VERSION}); upgrade gradhealth")
            conn.execute("PRAGMA journal_mode = WAL")  # not every filesystem has WAL: then default
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(DDL)
            from .. import __version__

            now = time.time()
            with _transaction(conn):
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                rows = [("schema_version", json.dumps(SCHEMA_VERSION)),
                        ("gradhealth_version", json.dumps(__version__))]
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)",
                             (json.dumps(now),))
                if self.mode == "a":
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                 "('resumed_at', ?)", (json.dumps(now),))
                conn.execute("DELETE FROM meta WHERE key = 'closed_at'")
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            self._loop(conn)
        except BaseException as exc:  # the writer must never die silently
            self._fail(exc, during="writing")
            self._drain()
            try:
                conn.close()
            except Exception:
                pass

    def _drain(self) -> None:
        """After a failure: keep what is queued in memory and release every waiter."""
        while True:
            try:
                op, payload = self._q.get_nowait()
            except queue.Empty:
                return
            if op in ("flush", "close"):
                payload.set()
            else:
                self._keep_in_memory(op, payload)

    def _loop(self, conn: sqlite3.Connection) -> None:
        batch: list[tuple[str, Any]] = []
        last_commit = time.monotonic()
        stop = False
        while not stop:
            try:
                if batch:
                    wait = self.flush_every - (time.monotonic() - last_commit)
                    item = self._q.get(timeout=max(wait, 0.0))
                else:
                    item = self._q.get()
            except queue.Empty:
                item = None
            waiters: list[tuple[str, threading.Event]] = []
            while item is not None:
                if item[0] in ("flush", "close"):
                    waiters.append(item)
                else:
                    batch.append(item)
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    item = None
            if batch and (waiters or time.monotonic() - last_commit >= self.flush_every):
                if self._commit(conn, batch, final=stop or any(op == "close" for op, _ in waiters)):
                    batch = []
                last_commit = time.monotonic()
            for op, done in waiters:
                if op == "close":
                    stop = True
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                done.set()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[str, Any]], final: bool = False) -> bool:
        """Write ``batch`` in one transaction. Returns False when the batch is kept for a
        retry: the database was locked by another process (each try waits ``busy_timeout``,
        5 s), which is transient; after :data:`LOCK_RETRY_S` of locks, or on any other
        error (disk full, I/O error, file removed), the store stops writing and says so."""
        if self.error is None:
            try:
                with _transaction(conn):
                    for op, payload in batch:
                        getattr(self, f"_write_{op}")(conn, payload)
                self._locked_since = None
                return True
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    now = time.monotonic()
                    first = self._locked_since or now
                    self._locked_since = first
                    if not final and now - first < LOCK_RETRY_S:
                        self._note("locked", f"gradhealth run store {self.path}: the database is locked by "
                                   "another process; rows are kept and written when it is released.")
                        return False
                self._fail(exc, during="writing")
            except Exception as exc:  # disk full, I/O error, file removed, ...: never raise
                self._fail(exc, during="writing")
        for op, payload in batch:
            self._keep_in_memory(op, payload)
        return True

    def _write_truncate(self, conn: sqlite3.Connection, from_step: int) -> None:
        for table in ("steps", "layer_stats", "time_grads", "events"):
            conn.execute(f"DELETE FROM {table} WHERE step >= ?", (from_step,))

    def _write_meta(self, conn: sqlite3.Connection, meta: dict) -> None:
        rows = []
        for k, v in meta.items():
            try:
                rows.append((str(k), json.dumps(jsonable(v), allow_nan=False, default=str)))
            except (TypeError, ValueError):
                rows.append((str(k), json.dumps(repr(v))))
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)

    def _write_layers(self, conn: sqlite3.Connection, layers: list[dict]) -> None:
        rows = []
        for d in layers:
            try:
                n = d.get("n_params")
                rows.append((int(d["index"]), str(d["name"]),
                             None if d.get("type") is None else str(d["type"]),
                             None if n is None else int(n)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self._bad_row("layers", d, exc)
        conn.executemany("INSERT OR REPLACE INTO layers (idx, name, type, n_params) "
                         "VALUES (?, ?, ?, ?)", rows)

    def _write_steps(self, conn: sqlite3.Connection, rows: list[dict]) -> None:
        self._upsert(conn, "steps", ("step",), STEP_COLUMNS, _STEP_NAMES, rows)

    def _write_layer_stats(self, conn: sqlite3.Connection, rows: list[dict]) -> None:
        series = []
        stats = rows
        if any(_TIME_KEY in r for r in rows if isinstance(r, dict)):
            stats = []
            for r in rows:
                if not isinstance(r, dict) or _TIME_KEY not in r:
                    stats.append(r)
                    continue
                try:
                    series.append((int(r["step"]), int(r["layer"]), encode_norms(r[_TIME_KEY])))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    self._bad_row("time_grads", r, exc)
                rest = {k: v for k, v in r.items() if k != _TIME_KEY}
                if len(rest) > 2:  # more than step and layer: statistics too
                    stats.append(rest)
        self._upsert(conn, "layer_stats", ("step", "layer"), LAYER_STAT_COLUMNS,
                     _LAYER_STAT_NAMES, stats)
        if series:
            conn.executemany(_TIME_GRADS_SQL, series)

    def _write_layer_block(self, conn: sqlite3.Connection, block: LayerBlock) -> None:
        conn.executemany(self._upsert_sql("layer_stats", ("step", "layer"), LAYER_STAT_COLUMNS, _LAYER_STAT_ORDER),
                         block.encoded())
        if block.time_grad:
            conn.executemany(_TIME_GRADS_SQL,
                             [(int(block.step[r]), int(block.layer[r]), encode_norms(v))
                              for r, v in block.time_grad.items()])

    def _write_events(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        rows = []
        for e in events:
            try:
                rows.append((None if e.step is None else int(e.step), str(e.kind),
                             None if e.layer is None else str(e.layer), str(e.severity),
                             str(e.message), dumps_evidence(e.evidence), str(e.remedy or ""),
                             None if e.since is None else int(e.since)))
            except (AttributeError, TypeError, ValueError) as exc:
                self._bad_row("events", e, exc)
                if isinstance(e, Event):
                    self.pending_events.append(e)
        conn.executemany("INSERT INTO events (step, kind, layer, severity, message, evidence, "
                         "remedy, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _upsert(self, conn, table, keys, cols, names, rows: list[dict]) -> None:
        groups: dict[tuple[str, ...], list] = {}
        for row in rows:
            try:
                key_values = [int(row[k]) for k in keys]
                present = tuple(c for c, _ in cols if c in row)
                if len(present) + len(keys) < len(row):
                    unknown = sorted(set(row) - names - set(keys))
                    self._note(f"unknown:{table}:{unknown}",
                               f"gradhealth run store: ignored unknown {table} column(s) "
                               f"{unknown}; known: {sorted(names)}.")
                values, bits = encode_row(row, cols, present)
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
                self._bad_row(table, row, exc)
                continue
            groups.setdefault(present, []).append((*key_values, *values, bits))
        for present, params in groups.items():
            conn.executemany(self._upsert_sql(table, keys, cols, present), params)

    def _upsert_sql(self, table, keys, cols, present: tuple[str, ...]) -> str:
        ck = (table, present)
        sql = self._sql_cache.get(ck)
        if sql is None:
            pos = {c: i for i, (c, _) in enumerate(cols)}
            present_bits = sum(1 << pos[c] for c in present)
            names = (*keys, *present, "nan_mask")
            updates = [f"{c} = excluded.{c}" for c in present]
            # Merge: columns of the new row overwrite (NaN bits included); the rest stay.
            updates.append(f"nan_mask = (nan_mask & {~present_bits}) | excluded.nan_mask")
            sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                   f"({', '.join('?' * len(names))}) ON CONFLICT ({', '.join(keys)}) "
                   f"DO UPDATE SET {', '.join(updates)}")
            self._sql_cache[ck] = sql
        return sql

    def _bad_row(self, table: str, row: Any, exc: BaseException) -> None:
        self.dropped_rows += table in ("steps", "layer_stats", "time_grads")
        self._note(f"bad:{table}", f"gradhealth run store: dropped a malformed {table} row "
                   f"({type(exc).__name__}: {exc}): {str(row)[:200]}. Further ones are dropped "
                   "silently and counted in RunStore.dropped_rows.")


class _transaction:
    """BEGIN ... COMMIT on an autocommit connection; ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return False

