"""The run store: round trips (NaN/Inf included), merging, concurrency, crashes, faults."""

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from gradhealth.errors import ParameterError, StoreError
from gradhealth.events import Event
from gradhealth.store import SCHEMA_VERSION, RunStore, StoreWarning, load_run

NAN, INF = float("nan"), float("inf")


def same(a, b):
    """Equality that treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _layers():
    return [{"index": 0, "name": "fc1", "type": "Linear", "n_params": 80},
            {"index": 1, "name": "blocks.[bold]x[/bold]", "type": "Linear", "n_params": 10}]


def test_round_trip_with_nonfinite_values(tmp_path):
    ev = Event(3, "nonfinite", "fc1", "critical", "NaN in fc1 gradient",
               {"max_abs": INF, "min": -INF, "vals": [1.0, NAN], "count": 3}, "skip the step", 2)
    with RunStore(tmp_path / "run") as store:
        store.write_meta({"model": "MLP", "lr": 0.1})
        store.write_layers(_layers())
        store.append_steps([{"step": 0, "loss": 2.5, "global_grad_norm": 1.0, "lr": 0.1,
                             "skipped": 0, "nonfinite_count": 0, "time": 12.5},
                            {"step": 1, "loss": NAN, "global_grad_norm": INF},
                            {"step": 2, "loss": -INF, "global_grad_norm_clipped": NAN}])
        store.append_layer_stats([{"step": 1, "layer": 0, "grad_norm": NAN, "param_norm": INF,
                                   "update_ratio": -INF, "nonfinite": 5, "out_grad_norm": 1.5,
                                   "act_std": 0.5, "dead_frac": 0.0, "sat_frac": NAN},
                                  {"step": 1, "layer": 1, "grad_norm": 0.25}])
        store.append_events([ev])
    run = load_run(tmp_path / "run")
    assert run.finished and run.meta["model"] == "MLP" and run.meta["schema_version"] == SCHEMA_VERSION
    assert run.layers == _layers()
    s0, s1, s2 = run.steps
    assert s0 == {"step": 0, "loss": 2.5, "global_grad_norm": 1.0, "global_grad_norm_clipped": None,
                  "lr": 0.1, "skipped": 0, "nonfinite_count": 0, "time": 12.5}
    assert math.isnan(s1["loss"]) and s1["global_grad_norm"] == INF and s1["lr"] is None
    assert s2["loss"] == -INF and math.isnan(s2["global_grad_norm_clipped"])
    assert s2["global_grad_norm"] is None  # not recorded stays distinct from NaN
    r0, r1 = run.layer_stats
    assert math.isnan(r0["grad_norm"]) and r0["param_norm"] == INF and r0["update_ratio"] == -INF
    assert r0["nonfinite"] == 5 and math.isnan(r0["sat_frac"]) and r0["out_grad_norm"] == 1.5
    assert r1 == {"step": 1, "layer": 1, "grad_norm": 0.25, "param_norm": None, "update_ratio": None,
                  "nonfinite": None, "out_grad_norm": None, "act_std": None, "dead_frac": None,
                  "sat_frac": None}
    (got,) = run.events
    assert (got.step, got.kind, got.layer, got.severity, got.message, got.remedy, got.since) == \
        (3, "nonfinite", "fc1", "critical", "NaN in fc1 gradient", "skip the step", 2)
    assert got.evidence["max_abs"] == INF and got.evidence["min"] == -INF
    assert got.evidence["count"] == 3 and math.isnan(got.evidence["vals"][1])


def test_nan_is_null_in_sql_so_aggregates_skip_it(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": i, "loss": v} for i, v in enumerate([1.0, NAN, 3.0])])
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    assert conn.execute("SELECT avg(loss), count(loss) FROM steps").fetchone() == (2.0, 2)
    assert conn.execute("SELECT step FROM steps WHERE nan_mask & 1").fetchall() == [(1,)]


def test_rows_for_the_same_step_merge(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": 4, "global_grad_norm": 2.0, "loss": NAN}])
        store.flush()
        store.append_steps([{"step": 4, "loss": 1.5}])           # observe() after the step
        store.append_steps([{"step": 4, "skipped": 1}])
        store.append_layer_stats([{"step": 4, "layer": 0, "grad_norm": 1.0}])
        store.append_layer_stats([{"step": 4, "layer": 0, "act_std": NAN}])
    run = load_run(tmp_path)
    (s,) = run.steps
    assert s["global_grad_norm"] == 2.0 and s["loss"] == 1.5 and s["skipped"] == 1
    (r,) = run.layer_stats
    assert r["grad_norm"] == 1.0 and math.isnan(r["act_std"])


def test_accepts_numpy_and_tensor_scalars(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": np.int64(0), "loss": torch.tensor(float("nan")),
                             "global_grad_norm": np.float32(2.5), "skipped": True}])
    (s,) = load_run(tmp_path).steps
    assert s["step"] == 0 and math.isnan(s["loss"]) and s["global_grad_norm"] == 2.5
    assert s["skipped"] == 1


def test_layer_and_step_series_and_pandas(tmp_path):
    with RunStore(tmp_path) as store:
        store.write_layers(_layers())
        store.append_steps([{"step": i, "loss": 1.0 / (i + 1)} for i in range(5)])
        store.append_layer_stats([{"step": i, "layer": l, "grad_norm": float(i * 10 + l)}
                                  for i in range(0, 5, 2) for l in (0, 1)])
        store.append_layer_stats([{"step": 5, "layer": 0, "param_norm": 1.0}])  # no grad_norm
    run = load_run(tmp_path)
    steps, vals = run.layer_series("fc1", "grad_norm")
    assert steps.tolist() == [0, 2, 4] and vals.tolist() == [0.0, 20.0, 40.0]
    assert run.layer_series(1, "grad_norm")[1].tolist() == [1.0, 21.0, 41.0]
    assert run.step_series("loss")[0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ParameterError, match="fc1"):
        run.layer_series("nope", "grad_norm")
    with pytest.raises(ParameterError, match="grad_norm"):
        run.layer_series("fc1", "gradnorm")
    pytest.importorskip("pandas")
    dfs = run.to_pandas()
    assert set(dfs) == {"meta", "layers", "steps", "layer_stats", "events"}
    assert dfs["steps"]["loss"].dtype == "float64" and len(dfs["steps"]) == 5
    st = dfs["layer_stats"]
    assert st.loc[st.layer == 1, "layer_name"].iloc[0] == "blocks.[bold]x[/bold]"
    assert st["grad_norm"].isna().sum() == 1


def test_to_pandas_without_pandas_says_how_to_install(tmp_path, monkeypatch):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": 0}])
    run = load_run(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'gradhealth\[pandas\]'"):
        run.to_pandas()


def test_mode_w_replaces_and_mode_a_appends(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": 0, "loss": 1.0}])
    with RunStore(tmp_path, mode="a") as store:
        store.append_steps([{"step": 1, "loss": 2.0}])
    run = load_run(tmp_path)
    assert [s["step"] for s in run.steps] == [0, 1] and "resumed_at" in run.meta
    with RunStore(tmp_path, mode="w") as store:
        store.append_steps([{"step": 7}])
    assert [s["step"] for s in load_run(tmp_path).steps] == [7]


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ParameterError, match="'mode' parameter of RunStore"):
        RunStore(tmp_path, mode="x")
    with pytest.raises(ParameterError, match="'flush_every'"):
        RunStore(tmp_path, flush_every=-1)
    with pytest.raises(ParameterError, match="'run_dir'"):
        RunStore(None)


def test_unwritable_run_dir_warns_once_and_keeps_events(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.warns(StoreWarning, match="could not open the run store") as rec:
        store = RunStore(blocker / "run")
    assert len(rec) == 1 and not store.ok and "Training continues" in store.error
    ev = Event(0, "nonfinite", "fc1", "critical", "NaN")
    with warnings_as_errors():
        store.append_steps([{"step": 0, "loss": 1.0}])
        store.append_events([ev])
        store.flush()
        store.close()
    assert store.pending_events == [ev] and store.dropped_rows == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.warns(StoreWarning):
            store = RunStore(ro / "run")
        store.append_events([Event(0, "nonfinite", None, "error", "x")])
        assert len(store.pending_events) == 1
    finally:
        ro.chmod(0o700)


class warnings_as_errors:
    """No further StoreWarning may be emitted inside the block (the warning comes once)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", StoreWarning)

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


def test_sqlite_error_mid_run_warns_once_and_training_continues(tmp_path, monkeypatch):
    store = RunStore(tmp_path, flush_every=0)
    store.append_steps([{"step": 0, "loss": 1.0}])
    assert store.flush()

    def disk_full(self, conn, rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "_write_steps", disk_full)
    evs = [Event(i, "grad_spike", "fc1", "warning", f"spike {i}") for i in range(3)]
    store.append_steps([{"step": 1, "loss": 2.0}])
    store.append_events(evs[:1])
    with pytest.warns(StoreWarning, match="database or disk is full") as rec:
        assert store.flush() is False
        for i in (1, 2):  # training goes on: later calls neither raise nor warn again
            store.append_steps([{"step": i + 1}])
            store.append_events([evs[i]])
        store.close()
    assert len(rec) == 1
    assert store.pending_events == evs and store.dropped_rows == 3
    run = load_run(tmp_path)  # what was committed before the failure is intact
    assert [s["step"] for s in run.steps] == [0] and run.events == []


def test_real_sqlite_full_error(tmp_path, monkeypatch):
    """SQLITE_FULL from SQLite itself (max_page_count stands in for a full disk)."""
    orig = RunStore._open

    def small_disk(self):
        conn = orig(self)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 3}")
        return conn

    monkeypatch.setattr(RunStore, "_open", small_disk)
    store = RunStore(tmp_path, flush_every=0)
    with pytest.warns(StoreWarning, match="full"):
        for i in range(200):
            store.append_steps([{"step": i * 100 + j, "loss": 1.0, "time": 1.0} for j in range(100)])
            store.append_events([Event(i, "loss_spike", None, "warning", "m" * 500)])
            store.flush()
        store.close()
    assert not store.ok and store.pending_events and store.dropped_rows > 0
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_malformed_and_unknown_rows_warn_and_are_counted(tmp_path):
    with pytest.warns(StoreWarning) as rec:
        with RunStore(tmp_path) as store:
            store.append_steps([{"loss": 1.0}, {"step": 1, "loss": "high"}, {"step": 2, "loss": 1.0}])
            store.append_steps([{"step": 3, "los": 1.0}])
            store.flush()
    msgs = " | ".join(str(w.message) for w in rec)
    assert "malformed steps row" in msgs and "unknown steps column(s) ['los']" in msgs
    assert store.dropped_rows == 2
    assert [s["step"] for s in load_run(tmp_path).steps] == [2, 3]


def test_writes_after_close_are_kept_in_memory(tmp_path):
    store = RunStore(tmp_path)
    store.close()
    ev = Event(1, "nonfinite", None, "error", "late")
    with pytest.warns(StoreWarning, match="after close"):
        store.append_events([ev])
    assert store.pending_events == [ev]
    store.close()  # idempotent


# ---------------------------------------------------------------- processes: readers and crashes

_WRITER = textwrap.dedent("""
    import os, sys, time
    from gradhealth.store import RunStore
    from gradhealth.events import Event
    run_dir, n, crash = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "crash"
    store = RunStore(run_dir, flush_every=0.02)
    store.write_layers([{"index": 0, "name": "fc1", "type": "Linear", "n_params": 4}])
    for i in range(n):
        store.append_steps([{"step": i, "loss": 1.0 / (i + 1)}])
        store.append_layer_stats([{"step": i, "layer": 0, "grad_norm": float(i)}])
        if i % 50 == 0:
            store.append_events([Event(i, "grad_spike", "fc1", "warning", "spike")])
        if i == n // 2:
            store.flush()
            print("flushed", i, flush=True)
            if crash:
                store.append_steps([{"step": 10**6}])   # enqueued, never committed
                os._exit(1)                              # no atexit, no close
        time.sleep(0.001)
    # no close(): the atexit handler must commit and close
""")


def _writer(tmp_path, n, mode):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(n), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reader_sees_a_consistent_run_while_it_is_written(tmp_path):
    proc = _writer(tmp_path, 600, "normal")
    seen, deadline = [], time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            run = load_run(tmp_path / "run")
        except StoreError:   # not created yet
            time.sleep(0.01)
            continue
        steps = [s["step"] for s in run.steps]
        assert steps == list(range(len(steps)))  # a prefix: batches are atomic
        assert len(run.layer_stats) == len(steps)
        seen.append(len(steps))
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert seen == sorted(seen) and any(0 < n < 600 for n in seen), seen
    run = load_run(tmp_path / "run")
    assert len(run.steps) == 600 and run.finished  # atexit closed it
    assert len(run.events) == 12


def test_crash_mid_run_never_corrupts(tmp_path):
    proc = _writer(tmp_path, 400, "crash")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "flushed 200" in out, err
    db = tmp_path / "run" / "run.sqlite"
    run = load_run(tmp_path / "run")
    assert not run.finished
    steps = [s["step"] for s in run.steps]
    assert steps[:201] == list(range(201)) and 10**6 not in steps
    assert len(run.events) >= 5
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ---------------------------------------------------------------- reader errors

def test_load_run_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(StoreError, match="not a gradhealth run: it has no run.sqlite"):
        load_run(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StoreError, match="it is a file"):
        load_run(tmp_path / "f.txt")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "run.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a gradhealth run|cannot be read"):
        load_run(junk)
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "run.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="SQLite file but not a gradhealth run"):
        load_run(other)


def test_newer_schema_is_refused(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": 0}])
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer|upgrade gradhealth"):
        load_run(tmp_path)
    with pytest.warns(StoreWarning, match="newer"):
        store = RunStore(tmp_path, mode="a")
    assert not store.ok
    with pytest.raises(StoreError):  # the file was left alone: still refused, not overwritten
        load_run(tmp_path)


def test_a_damaged_store_is_refused_with_a_fix(tmp_path):
    """A corrupt run.sqlite was refused with the SQLite error and no Fix line."""
    from gradhealth.store import load_run

    (tmp_path / "run.sqlite").write_bytes(b"not sqlite at all" * 64)
    with pytest.raises(StoreError) as exc:
        load_run(tmp_path)
    assert "cannot be read" in str(exc.value) and "Fix:" in str(exc.value)
