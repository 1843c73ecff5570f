"""A store holding values of the wrong type (crafted or damaged): the reader takes exactly those
values as not recorded, counts them in ``Run.notes``, and reads every other value as it reads the
clean store. Oracle: the same store loaded before the damage."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from gradhealth.store import RunStore, load_run


def _store(tmp_path):
    rng = np.random.default_rng(0)
    with RunStore(tmp_path / "run") as st:
        st.write_layers([{"index": i, "name": f"l{i}", "type": "Linear", "n_params": 4} for i in range(3)])
        st.append_steps([{"step": s, "loss": float(rng.random()), "global_grad_norm": float(rng.random())}
                         for s in range(5)])
        st.append_layer_stats([{"step": s, "layer": i, "grad_norm": (math.nan if s == i else float(rng.random())),
                                "nonfinite": s} for s in range(5) for i in range(3)])
    return tmp_path / "run"


def _damage(run_dir, sql):
    con = sqlite3.connect(run_dir / "run.sqlite")
    con.executescript(sql)
    con.commit()
    con.close()


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("mode", [True, "columns"])
def test_only_the_mistyped_values_change(tmp_path, mode):
    run_dir = _store(tmp_path)
    clean = load_run(run_dir, layer_stats=True)
    _damage(run_dir, "UPDATE layer_stats SET grad_norm = 'zz' WHERE step = 3 AND layer = 1;"
                     "UPDATE layer_stats SET nonfinite = x'01' WHERE step = 4 AND layer = 2;"
                     "UPDATE layer_stats SET step = 'x' WHERE step = 2 AND layer = 0;")
    run = load_run(run_dir, layer_stats=mode)
    got = {(r["step"], r["layer"]): r for r in (run.layer_stats if mode is True else _rows(run.columns))}
    want = {(r["step"], r["layer"]): r for r in clean.layer_stats}
    assert set(want) - set(got) == {(2, 0)}          # the row without an integer step is left out
    for k, row in got.items():
        for f in ("grad_norm", "nonfinite"):
            if (k, f) in {((3, 1), "grad_norm"), ((4, 2), "nonfinite")}:
                assert row[f] is None
            else:
                assert _same(row[f], want[k][f]), (k, f, row[f], want[k][f])
    assert any("2 stored value(s) had the wrong type" in n for n in run.notes), run.notes
    assert any("1 stored row(s)" in n for n in run.notes), run.notes


def _rows(cols):
    out = []
    for i in range(len(cols)):
        r = {"step": int(cols.step[i]), "layer": int(cols.layer[i])}
        for f in ("grad_norm", "nonfinite"):
            v = float(cols.values[f][i])
            r[f] = None if not cols.recorded[f][i] else (int(v) if f == "nonfinite" else v)
        out.append(r)
    return out


def test_a_clean_store_has_no_notes(tmp_path):
    run = load_run(_store(tmp_path), layer_stats="columns")
    assert run.notes == []


@pytest.mark.parametrize("extra", ["", "UPDATE layer_stats SET grad_norm = 'zz' WHERE step = 0 AND layer = 0;"])
@pytest.mark.parametrize("mode", [True, "columns"])
def test_a_key_that_is_not_an_integer_drops_its_row(tmp_path, mode, extra):
    run_dir = _store(tmp_path)
    _damage(run_dir, "UPDATE layer_stats SET step = 2.5 WHERE step = 2 AND layer = 1;" + extra)
    run = load_run(run_dir, layer_stats=mode)
    cols = run.layer_columns()           # raised TypeError on a None step
    keys = set(zip(cols.step.tolist(), cols.layer.tolist()))
    assert (2, 1) not in keys and len(keys) == 14
    assert any("1 stored row(s)" in n for n in run.notes), run.notes
    if mode is True:
        pytest.importorskip("pandas")
        assert len(run.to_pandas()["layer_stats"]) == 14
