"""The run store under real faults (issue 9): a dead writer thread, a lock held by another
process, a failing write_meta. Nothing raises into training, nothing is lost silently."""

from __future__ import annotations

import sqlite3
import time
import warnings

import pytest
import torch
from torch import nn

from gradhealth.store import RunStore, load_run
from gradhealth.store.writer import StoreWarning
from gradhealth.watch import WatchWarning, watch


def _rows(n, start=0):
    return [{"step": s, "loss": float(s)} for s in range(start, start + n)]


def test_a_dead_writer_thread_is_reported_and_its_rows_counted(tmp_path, monkeypatch):
    def dying_loop(self, conn):
        raise MemoryError("writer died")
    monkeypatch.setattr(RunStore, "_loop", dying_loop)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        store = RunStore(tmp_path / "run")
        store._thread.join(2.0)
        store.append_steps(_rows(3))
        t0 = time.monotonic()
        assert store.flush() is False
        store.close()
        took = time.monotonic() - t0
    assert took < 5.0                       # no 30-s stall on a dead thread
    assert store.error is not None and "died" in store.error
    assert store.dropped_rows == 3
    assert any(issubclass(r.category, StoreWarning) for r in rec)


def test_a_lock_held_by_another_process_delays_rows_but_loses_none(tmp_path, monkeypatch):
    monkeypatch.setattr(RunStore, "BUSY_TIMEOUT_MS", 100)   # each try waits 0.1 s, not 5 s
    store = RunStore(tmp_path / "run", flush_every=0.05)
    store.append_steps(_rows(2))
    assert store.flush()
    other = sqlite3.connect(str(store.path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")                       # another process locks the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        store.append_steps(_rows(3, start=2))
        time.sleep(5.5)   # longer than SQLite's default 5-s busy wait: before issue 9 the store gave up
        other.execute("COMMIT")
        other.close()
        store.append_steps(_rows(1, start=5))
        store.close()
    assert store.error is None and store.dropped_rows == 0
    assert [r["step"] for r in load_run(tmp_path / "run").steps] == [0, 1, 2, 3, 4, 5]


def test_watch_survives_a_store_whose_write_meta_raises(tmp_path, monkeypatch):
    def broken(self, meta):
        raise OSError("disk on fire")
    monkeypatch.setattr(RunStore, "write_meta", broken)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(WatchWarning, match="disk on fire"):
        w = watch(model, opt, run_dir=tmp_path / "run")   # must not raise
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 4)).sum().backward()
            opt.step()
        w.remove()
    assert w.step == 3 and any(e.kind == "internal" and e.evidence["site"] == "store" for e in w.events)


def test_the_summary_says_rows_were_lost_when_the_store_stopped(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with watch(model, opt, run_dir=tmp_path / "run") as w:
            # the disk fills up mid-run: every later commit fails
            monkeypatch.setattr(RunStore, "_write_steps", lambda self, conn, rows: (_ for _ in ()).throw(
                sqlite3.OperationalError("database or disk is full")))
            for _ in range(4):
                opt.zero_grad()
                model(torch.randn(8, 4)).sum().backward()
                opt.step()
            w.store.flush()
    text = w.summary()
    assert "could not be written" in text
    assert any(e.kind == "internal" and "stopped writing" in e.message for e in w.events)


def test_a_bad_run_dir_is_still_a_parameter_error(tmp_path):
    from gradhealth.errors import ParameterError

    model = nn.Linear(2, 2)
    with pytest.raises(ParameterError, match="run_dir"):
        watch(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir="  ")


