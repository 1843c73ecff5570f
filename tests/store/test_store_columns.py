"""Schema 2: per-time-step gradients (time_grads), version-1 stores, and the columnar read path
(checked against the dict rows, the oracle)."""

import math
import sqlite3
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.errors import ParameterError
from gradhealth.store import RunStore, load_run
from gradhealth.store.reader import LayerColumns
from gradhealth.store.schema import LAYER_STAT_COLUMNS
from gradhealth.watch.schedule import steps

NAN, INF = float("nan"), float("inf")
FIELDS = tuple(c for c, _ in LAYER_STAT_COLUMNS)


def test_time_grads_round_trip_bit_for_bit(tmp_path):
    series = [1e-30, 0.0, NAN, INF, -INF, 2.5]
    with RunStore(tmp_path) as store:
        store.write_layers([{"index": 0, "name": "rnn", "type": "LSTM", "n_params": 4}])
        store.append_layer_stats([{"step": 3, "layer": 0, "grad_norm": 1.0, "time_grad": series},
                                  {"step": 4, "layer": 0, "time_grad": np.array([1.0, 2.0])}])
    run = load_run(tmp_path)
    steps, norms = run.time_series("rnn")
    assert steps.tolist() == [3, 4]
    np.testing.assert_array_equal(norms[0], np.array(series))  # NaN == NaN here
    assert norms[1].tolist() == [1.0, 2.0]
    # a row that carried only the series added no layer_stats row
    assert [(r["step"], r["grad_norm"]) for r in run.layer_stats] == [(3, 1.0)]
    assert load_run(tmp_path).to_pandas  # still loads the plain way


def test_malformed_time_grad_is_dropped_and_counted(tmp_path):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        store = RunStore(tmp_path)
        store.append_layer_stats([{"step": 0, "layer": 0, "grad_norm": 1.0, "time_grad": [[1.0], [2.0]]}])
        store.close()
    assert store.dropped_rows == 1 and any("time_grads" in str(w.message) for w in got)
    assert load_run(tmp_path).layer_stats[0]["grad_norm"] == 1.0  # the statistics survive


def test_a_damaged_time_series_is_left_out_with_a_note(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_layer_stats([{"step": 0, "layer": 0, "time_grad": [1.0]}])
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    conn.execute("INSERT INTO time_grads VALUES (1, 0, x'0102')")  # 2 bytes: not float64s
    conn.commit()
    conn.close()
    run = load_run(tmp_path)
    assert len(run.time_grads) == 1 and "1 per-time-step" in run.notes[0]


def test_a_version_1_store_still_reads(tmp_path):
    with RunStore(tmp_path) as store:
        store.append_steps([{"step": 0, "loss": 1.0}])
        store.append_layer_stats([{"step": 0, "layer": 0, "grad_norm": 2.0}])
    conn = sqlite3.connect(tmp_path / "run.sqlite")  # what gradhealth wrote before schema 2
    conn.execute("DROP TABLE time_grads")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    run = load_run(tmp_path, layer_stats="columns")
    assert run.steps[0]["loss"] == 1.0 and run.time_grads == [] and run.notes == []
    assert run.columns.values["grad_norm"].tolist() == [2.0]
    with RunStore(tmp_path, mode="a") as store:  # resuming upgrades it in place
        store.append_layer_stats([{"step": 1, "layer": 0, "time_grad": [3.0]}])
    assert load_run(tmp_path).time_grads[0]["norms"].tolist() == [3.0]


class _Rec(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    """A real watched LSTM run with a NaN input at step 5 (guard: skip)."""
    d = tmp_path_factory.mktemp("lstm")
    torch.manual_seed(0)
    model = _Rec()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(9, 4, 12, 3, generator=g)
    xs[5, 0, 2, 1] = NAN
    ys = torch.randint(0, 2, (9, 4), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, run_dir=d, on_nonfinite="skip",
                              detail_every=steps([0, 1, 2, 3, 5])) as w:
            for s in range(9):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[s]), ys[s])
                loss.backward()
                opt.step()
                w.observe(loss)
    return d, w


def test_watched_lstm_stores_the_time_grads_the_detectors_saw(lstm_run):
    d, w = lstm_run
    run = load_run(d)
    seen = [(s.step, s.time_grad["rnn"]) for s in w.history if "rnn" in (s.time_grad or {})]
    assert seen, "the watcher measured no time series"
    steps, norms = run.time_series("rnn")
    assert steps.tolist() == [s for s, _ in seen]
    for (_, want), got in zip(seen, norms):
        assert got.shape == (12,)
        np.testing.assert_array_equal(got, want)  # the same numbers, NaN included
    assert run.time_series("head")[0].size == 0


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and (a == b or (math.isnan(a) and math.isnan(b))))


def test_columns_equal_the_dict_rows_on_a_real_run_with_special_values(lstm_run, tmp_path):
    d, _ = lstm_run
    # plant every special value, and cells never recorded, into a copy of the real run
    import shutil

    shutil.copytree(d, tmp_path / "r")
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")
    conn.execute("UPDATE layer_stats SET grad_norm = NULL, nan_mask = nan_mask | 1 WHERE step = 1 AND layer = 0")
    conn.execute("UPDATE layer_stats SET grad_norm = 9e999 WHERE step = 2 AND layer = 1")
    conn.execute("UPDATE layer_stats SET update_ratio = -9e999 WHERE step = 0 AND layer = 0")
    conn.execute("UPDATE layer_stats SET grad_norm = 0.0, param_norm = NULL WHERE step = 3 AND layer = 1")
    conn.commit()
    conn.close()
    rows = load_run(tmp_path / "r").layer_stats
    oracle = LayerColumns.from_rows(rows)
    fast = load_run(tmp_path / "r", layer_stats="columns").columns
    assert len(fast) == len(rows) > 10
    assert fast.step.tolist() == [r["step"] for r in rows] and fast.layer.tolist() == [r["layer"] for r in rows]
    specials = set()
    for f in FIELDS:
        np.testing.assert_array_equal(fast.recorded[f], oracle.recorded[f])
        np.testing.assert_array_equal(fast.values[f], oracle.values[f])
        for r, v, ok in zip(rows, fast.values[f], fast.recorded[f]):  # and against the dicts
            assert _same(r[f], float(v) if ok else None)
            if ok and not (math.isfinite(v) and v != 0):
                specials.add("nan" if math.isnan(v) else "0" if v == 0 else str(v))
    assert {"nan", "inf", "-inf", "0"} <= specials
    assert not oracle.recorded["param_norm"].all()  # not-recorded cells are part of the check


def test_columns_of_selected_fields_and_bad_fields(lstm_run):
    d, _ = lstm_run
    run = load_run(d, layer_stats="columns", fields=("grad_norm",))
    assert list(run.columns.values) == ["grad_norm"] and run.layer_stats == []
    assert run.layer_columns(("grad_norm",)) is run.columns
    with pytest.raises(ParameterError, match="fields"):
        run.layer_columns(("update_ratio",))
    with pytest.raises(ParameterError, match="fields"):
        load_run(d, layer_stats="columns", fields=("grad",))
