"""Buffers under the guard (issue 9): a skipped step leaves BatchNorm's running statistics as
before the bad forward; replay never changes them; rollback.pt is never unpickled."""

from __future__ import annotations

import copy
import math
import os
import pickle
import warnings

import pytest
import torch
from torch import nn

from gradhealth.watch import WatchWarning, watch


class NaNAt(nn.Module):
    """Identity, except that at ``step`` one entry of the output becomes ``value``."""

    def __init__(self, step: int, value: float = math.nan):
        super().__init__()
        self.at, self.value, self.calls = step, value, 0

    def forward(self, x):
        self.calls += 1
        if self.calls - 1 == self.at:
            x = x.clone()
            x.view(-1)[0] = self.value
        return x


def bn_net(bad_step=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), NaNAt(bad_step), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def train(model, opt, data, w=None, skip=()):
    for k, (x, y) in enumerate(data):
        if k in skip:
            continue
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if w is not None:
            w.observe(loss)


def test_a_skipped_step_restores_the_batchnorm_statistics_its_forward_poisoned():
    data = batches(6)
    model = bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt, on_nonfinite="skip") as w:
            train(model, opt, data, w)
    # oracle: the same training with the bad batch left out entirely (the NaN module is
    # identity on every other call, and BatchNorm counts only the batches it saw)
    ref = bn_net(bad_step=-1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    train(ref, ref_opt, data, skip={3})
    bn, bn_ref = model[2], ref[2]
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 5
    model.eval()
    assert torch.isfinite(model(data[0][0])).all()
    guard = [e for e in w.events if e.kind == "guard"]
    assert len(guard) == 1 and guard[0].step == 3
    assert set(guard[0].evidence["buffers_restored"]) == {"2.running_mean", "2.running_var",
                                                          "2.num_batches_tracked"}
    assert "3 buffers the bad forward changed restored" in guard[0].message


def test_a_large_buffer_changed_in_place_is_reported_not_silently_kept():
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.zeros(300, 300))   # > 65536 entries: not copied

        def forward(self, x):
            self.table.add_(1.0)
            return x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), NaNAt(2), Table(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt, on_nonfinite="skip") as w:
            train(model, opt, batches(4), w)
    guard = [e for e in w.events if e.kind == "guard"]
    assert guard[0].evidence["buffers_not_restored"] == ["2.table"]
    assert "NOT restored" in guard[0].message and "'2.table'" in guard[0].message


def test_replay_leaves_buffers_and_rng_as_an_unwatched_run_has_them():
    data = batches(5)
    model = bn_net()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(twin.parameters(), lr=0.1)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with watch(model, opt, on_nonfinite="warn") as w:   # warn: no guard, no buffer restore
            train(model, opt, data, w)
            after_watched = torch.rand(3)
    torch.manual_seed(1)
    twin[1].calls = 0
    train(twin, opt_t, data)
    after_twin = torch.rand(3)
    assert w.replays   # it ran (its NaN does not reproduce: NaNAt counts calls)
    for (n, b), (_, bt) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(b, bt) or (torch.isnan(b).any() and torch.equal(torch.isnan(b), torch.isnan(bt))), n
    assert torch.equal(after_watched, after_twin)   # the replay gave the RNG back


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_rollback_snapshot_on_disk_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), NaNAt(4), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt, run_dir=run, on_nonfinite="rollback", rollback_storage="disk",
                   rollback_every=100) as w:
            data = batches(6)
            train(model, opt, data[:3], w)
            # someone with write access to the run directory plants a pickle
            with open(run / "rollback.pt", "wb") as f:
                pickle.dump({"params": _Boom(), "opt_states": []}, f)
            train(model, opt, data[3:5], w)
    assert not (tmp_path / "PWNED").exists()
    guard = [e for e in w.events if e.kind == "guard"]
    assert guard and guard[0].evidence["action"] == "skip" and guard[0].evidence["to_step"] is None
    internal = [e for e in w.events if e.kind == "internal"]
    assert internal and internal[0].evidence["site"] == "rollback"


@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_a_skipped_batchnorm_step_leaves_eval_outputs_finite(policy):
    model = bn_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt, on_nonfinite=policy, rollback_every=1):
            train(model, opt, batches(6))
    model.eval()
    assert torch.isfinite(model(batches(1, seed=5)[0][0])).all()
