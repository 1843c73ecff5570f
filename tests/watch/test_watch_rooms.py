"""The watcher's rooms on their own: the typed record, the read-back queue, the pure assembly.

Oracles are hand-built records with known numbers (no watcher involved)."""

from __future__ import annotations

import math

import numpy as np
import torch

from gradhealth.detectors.base import LayerTable
from gradhealth.watch._assemble import forward_depth, layer_block, model_info, step_row, step_stats
from gradhealth.watch._readback import ReadbackQueue, to_host
from gradhealth.watch._record import ActStats, ClipSamples, GradNorms, Loss, OutGrad, StepRecord, decode_clip


def _table(n=3):
    return LayerTable(tuple(f"l{i}" for i in range(n)), ("Linear",) * n, ("weight",) * n, ("",) * n,
                      ("",) * n, (-1,) * n, (1,) * n)



def store_rows(s, m, seconds):
    """The steps row and the layer rows (dicts) one step writes: step_row and layer_block's rows."""
    return step_row(s, m, seconds), layer_block([(s, m)]).rows()


def test_not_measured_is_null_and_measured_nan_is_a_number():
    rec = StepRecord(step=4, detail=True)
    rec.post = {0: 3.0, 1: 4.0, 2: math.nan}        # layer 2's gradient norm is NaN
    rec.nf = {0: 0, 1: 0, 2: 5}
    rec.outg = {0: 9.0}                             # only layer 0's output gradient measured
    rec.outn = {0: 9}
    rec.act = {1: [np.array([1.0, np.nan, 0.25])]}
    stats, m = step_stats(rec, _table(), [0, 1, 2], 0.5, {})
    assert m.grads and not m.clipped
    assert list(m.out_grad) == [True, False, False] and list(m.act) == [False, True, False]
    row, rows = store_rows(stats, m, 1.5)
    assert row["global_grad_norm"] != row["global_grad_norm"]  # NaN: measured, not finite
    assert row["global_grad_norm_clipped"] is None and row["nonfinite_count"] == 5 and row["time"] == 1.5
    by_layer = {r["layer"]: r for r in rows}
    assert by_layer[0]["out_grad_norm"] == 3.0 and by_layer[1]["out_grad_norm"] is None
    assert by_layer[1]["act_std"] == 1.0 and by_layer[1]["dead_frac"] is None and by_layer[1]["sat_frac"] == 0.25
    assert math.isnan(by_layer[2]["grad_norm"]) and by_layer[2]["nonfinite"] == 5


def test_a_step_that_measured_nothing_writes_nulls_and_no_layer_rows():
    stats, m = step_stats(StepRecord(step=0, detail=False), _table(), [0, 1, 2], None, {})
    row, rows = store_rows(stats, m, 0.0)
    assert row["global_grad_norm"] is None and row["nonfinite_count"] is None and rows == []


def test_pre_clip_norm_is_applied_norm_over_clip_coefficient():
    rec = StepRecord(step=0, detail=False)
    # end-of-backward samples [1, 2, 3, 4], after a clip by 0.25 (not a power of two alone: a
    # second tensor keeps its gradient, so it is no common AMP factor)
    decode_clip(rec, [0, 1], np.array([1, 2, 3, 4, 1, 1, 1, 1, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1],
                                      dtype=np.float32), None)
    assert rec.clip == {0: 0.25, 1: 1.0} and rec.clipped and rec.clip_exact
    rec.post = {0: 2.0, 1: 0.0}
    stats, m = step_stats(rec, _table(2), [0, 1], None, {})
    assert stats.global_grad_norm == 8.0 and stats.global_grad_norm_clipped == 2.0 and m.clipped


def test_a_common_power_of_two_without_scaler_is_unscaling_not_clipping():
    rec = StepRecord(step=0, detail=False)
    decode_clip(rec, [0, 1], np.array([1, 2, 3, 4, 5, 6, 7, 8] + [x / 1024 for x in range(1, 9)],
                                      dtype=np.float32), None)
    assert rec.clip == {0: 1.0, 1: 1.0} and not rec.clipped


def test_readback_returns_completed_records_and_defers_on_request():
    q = ReadbackQueue()
    q.defer_always = True
    a = StepRecord(step=0, detail=True)
    a.pending.append(OutGrad(torch.tensor([4.0]), layer=1, n=4))
    a.loss = torch.tensor(0.25)
    assert q.finish(a) == [] and q.deferred == [a]
    b = StepRecord(step=1, detail=False)
    b.pending.append(GradNorms(torch.tensor([3.0, 4.0]), positions=[0, 1]))
    assert q.read_now(b) == [a]                       # a rode along with b's transfer
    assert a.outg == {1: 4.0} and a.outn == {1: 4} and a.loss == 0.25 and a.pending == []
    assert b.post == {0: 3.0, 1: 4.0} and q.deferred == []
    q.defer_always = False
    b.pending.append(ActStats(torch.tensor([1.0, 0.0, 0.5]), layer=2))
    assert q.finish(b) == [b] and b.act[2][0].tolist() == [1.0, 0.0, 0.5]
    assert q.flush() == []


def test_to_host_keeps_each_tensors_values_in_order():
    ts = [torch.tensor([1.0, 2.0]), torch.tensor(3.0, dtype=torch.float64), torch.zeros(0),
          torch.tensor([4], dtype=torch.int32)]
    got = to_host(ts)
    assert [g.tolist() for g in got] == [[1.0, 2.0], [3.0], [], [4.0]]


def test_loss_and_clip_items_store_their_values():
    rec = StepRecord(step=0, detail=False)
    Loss(torch.tensor(1.0)).store(rec, np.array([2.5]), None)
    ClipSamples(torch.zeros(8), positions=[3]).store(rec, np.array([2, 2, 2, 2, 0.6, 0.6, 0.6, 0.6]), None)
    assert rec.loss == 2.5 and rec.clip == {3: 0.3}


def test_forward_depth_and_model_info_are_pure():
    t = LayerTable(("a", "b", "c"), ("Linear", "Tanh", "ReLU"), ("weight", "activation", "activation"),
                   ("", "saturating", "relu"), ("", "tanh", "relu"), (-1, -1, -1), (3, 0, 0))
    assert forward_depth(t, {2: 0, 0: 1}).depth == (1, -1, 0) and t.depth == (-1, -1, -1)
    assert model_info(t) == {"depth": 1, "has_norm": False, "is_recurrent": False, "activation": "tanh"}
