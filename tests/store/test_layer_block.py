"""The columnar layer rows (LayerBlock) against the per-layer dict loop they replace, and the
store's vectorised encoding against its row-by-row one (the same rows, bit for bit)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from gradhealth.detectors.base import LayerTable, StepStats
from gradhealth.store import RunStore
from gradhealth.store.blocks import LayerBlock
from gradhealth.watch._assemble import Measured, layer_block


def _slow_rows(s: StepStats, m: Measured) -> list[dict]:
    """The layer rows of one step, one layer at a time (the loop the block replaced)."""
    rows = []
    measured_grad = np.isfinite(s.grad_norm) | (s.nonfinite_grad > 0)
    index = s.layers.position
    time_grad = {index[n]: v for n, v in s.time_grad.items() if n in index} if s.time_grad else {}
    for i in range(len(s.layers)):
        vals = {"grad_norm": s.grad_norm[i] if measured_grad[i] else None,
                "param_norm": s.param_norm[i] if (s.nonfinite_param[i] >= 0) else None,
                "update_ratio": s.update_ratio[i] if np.isfinite(s.update_ratio[i]) else None,
                "nonfinite": int(s.nonfinite_grad[i]) if s.nonfinite_grad[i] >= 0 else None,
                "out_grad_norm": s.out_grad_norm[i] if m.out_grad[i] else None,
                "act_std": s.act_std[i] if m.act[i] else None,
                "dead_frac": s.dead_frac[i] if (m.act[i] and np.isfinite(s.dead_frac[i])) else None,
                "sat_frac": s.sat_frac[i] if (m.act[i] and np.isfinite(s.sat_frac[i])) else None}
        if i in time_grad:
            vals["time_grad"] = time_grad[i]
        elif all(v is None for v in vals.values()):
            continue
        vals["step"] = s.step
        vals["layer"] = i
        rows.append(vals)
    return rows


def _table(L: int) -> LayerTable:
    roles = tuple("recurrent" if i % 5 == 4 else "weight" for i in range(L))
    return LayerTable(tuple(f"l{i}" for i in range(L)), ("Linear",) * L, roles, ("",) * L, ("",) * L,
                      tuple(range(L)), (1,) * L)


def _values(rng, L, p_nan=0.15, p_inf=0.1, p_gone=0.3):
    """Floats with NaN, +-inf and "not measured" (NaN too: the masks tell them apart)."""
    v = rng.lognormal(0, 3, L)
    u = rng.random(L)
    v[u < p_nan] = np.nan
    v[(u >= p_nan) & (u < p_nan + p_inf)] = np.inf * rng.choice([-1, 1], L)[(u >= p_nan) & (u < p_nan + p_inf)]
    v[rng.random(L) < p_gone] = np.nan
    return v


def _random_step(rng, step: int, L: int) -> tuple[StepStats, Measured]:
    t = _table(L)
    nfg = rng.choice([-1, 0, 0, 3], L)
    nfp = rng.choice([-1, 0, 1], L)
    out = rng.random(L) < 0.5
    act = rng.random(L) < 0.5
    tg = {t.names[i]: rng.random(int(rng.integers(1, 6))) for i in range(L) if t.roles[i] == "recurrent"
          and rng.random() < 0.5}
    tg["not a layer"] = np.ones(2)
    s = StepStats(step=step, layers=t, loss=None, global_grad_norm=1.0, global_grad_norm_clipped=np.nan,
                  lr=None, skipped=False, skip_reason=None, grad_norm=_values(rng, L), param_norm=_values(rng, L),
                  update_ratio=_values(rng, L), nonfinite_grad=nfg, nonfinite_param=nfp,
                  out_grad_norm=_values(rng, L), out_grad_rms=_values(rng, L), act_std=_values(rng, L),
                  dead_frac=_values(rng, L), sat_frac=_values(rng, L), time_grad=tg, origin=None, full=True,
                  info={})
    return s, Measured(grads=True, clipped=False, out_grad=out, act=act)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return a == b and type(a) is type(b) or (a is None and b is None)


def _plain(rows):
    return [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()} for r in rows]


@pytest.mark.parametrize("seed", range(12))
def test_block_rows_equal_the_per_layer_loop(seed):
    rng = np.random.default_rng(seed)
    Ls = [int(rng.integers(1, 40))] * 3 + [int(rng.integers(1, 40))] * 2   # the model may grow mid-batch
    steps = [_random_step(rng, k, L) for k, L in enumerate(Ls)]
    got = layer_block(steps).rows()
    want = [r for s, m in steps for r in _plain(_slow_rows(s, m))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert _same(g[k], w[k]), (k, g[k], w[k])


def _dump(path) -> tuple[list, list]:
    with sqlite3.connect(path) as conn:
        stats = conn.execute("SELECT * FROM layer_stats ORDER BY step, layer").fetchall()
        series = conn.execute("SELECT * FROM time_grads ORDER BY step, layer").fetchall()
    return stats, series


@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_encoding_writes_what_the_row_encoding_writes(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    steps = [_random_step(rng, k, 23) for k in range(6)]
    block = layer_block(steps)
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    a.append_layer_block(block)
    b.append_layer_stats(block.rows())
    a.close()
    b.close()
    assert a.dropped_rows == b.dropped_rows == 0
    da, db = _dump(a.path), _dump(b.path)
    assert len(da[0]) == len(block) and len(da[1]) > 0
    assert da == db   # REAL values bit for bit, NULLs and NaN masks, integer counts


def test_an_inconsistent_block_is_refused_before_it_reaches_the_writer():
    with pytest.raises(ValueError, match="inconsistent shapes"):
        LayerBlock(np.zeros(2, np.int64), np.zeros(3, np.int64), np.zeros((2, 8)), np.zeros((2, 8), bool))


def test_a_block_the_store_cannot_write_is_counted_as_lost(tmp_path):
    st = RunStore(tmp_path / "r")
    st.close()
    rng = np.random.default_rng(0)
    block = layer_block([_random_step(rng, 0, 7)])
    st.append_layer_block(block)
    assert st.dropped_rows == len(block) > 0


def test_no_steps_make_an_empty_block_that_writes_nothing(tmp_path):
    block = layer_block([])
    assert len(block) == 0 and block.rows() == [] and block.encoded() == []
    st = RunStore(tmp_path / "r")
    st.append_layer_block(block)
    st.close()
    assert _dump(st.path) == ([], [])
