"""on_nonfinite policies: the run survives injected NaNs, optimizer state untouched, every
action an Event."""

import copy
import math

import pytest
import torch
from torch import nn

from gradhealth.errors import NonFiniteError
from gradhealth.watch import WatchWarning, never, watch
from gradhealth.watch.replay import ReplayReport

from watchnets import InfAfter


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), InfAfter(), nn.Linear(16, 3))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def step(model, opt, x, y, w=None):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if w is not None:
        w.observe(loss)


BAD = {3, 4, 7}


def test_skip_keeps_the_run_alive_and_equals_training_without_the_bad_batches():
    data = batches(10)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    states = {}
    with watch(model, opt, on_nonfinite="skip") as w:
        for i, (x, y) in enumerate(data):
            model[2].armed = i in BAD
            before = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in model.parameters()])
            step(model, opt, x, y, w)
            if i in BAD:
                states[i] = before
                after = opt.state_dict()
                for k, st in before[0]["state"].items():
                    for name, v in st.items():
                        assert torch.equal(v, after["state"][k][name]), (i, name)
                assert all(torch.equal(a, b) for a, b in zip(before[1], model.parameters()))
    ref = make()
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for i, (x, y) in enumerate(data):
        if i not in BAD:
            step(ref, ropt, x, y)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    guard = [e for e in w.events if e.kind == "guard"]
    assert [e.step for e in guard] == sorted(BAD)
    assert all(e.evidence["action"] == "skip" and e.layer == "2" for e in guard)
    assert guard[0].evidence["replay"]["module_type"] == "InfAfter"
    skipped = [s.step for s in w.history if s.skipped]
    assert skipped == sorted(BAD) and w.step == 10
    assert all(s.skip_reason == "guard" for s in w.history if s.skipped)


def test_skip_budget_then_raise():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteError) as exc:
        with watch(model, opt, on_nonfinite="skip", max_consecutive_skips=2) as w:
            for i, (x, y) in enumerate(batches(10)):
                model[2].armed = i >= 3
                step(model, opt, x, y, w)
    assert isinstance(exc.value.diagnosis, ReplayReport) and exc.value.diagnosis.module == "2"
    acts = [(e.step, e.evidence["action"]) for e in w.events if e.kind == "guard"]
    assert acts == [(3, "skip"), (4, "skip"), (5, "raise")]
    assert not w.active      # the with block removed it on the way out


def test_raise_carries_the_diagnosis_and_leaves_parameters_untouched():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, on_nonfinite="raise") as w:
        for x, y in batches(3):
            step(model, opt, x, y, w)
        model[2].armed = True
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(NonFiniteError, match="InfAfter") as exc:
            step(model, opt, *batches(1, seed=5)[0], w)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    d = exc.value.diagnosis
    assert (d.step, d.module, d.direction) == (3, "2", "forward")
    assert [e.evidence["action"] for e in w.events if e.kind == "guard"] == ["raise"]
    assert isinstance(exc.value, FloatingPointError)


def test_rollback_restores_last_good_state_and_lowers_lr():
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    snaps = {}
    with watch(model, opt, on_nonfinite="rollback", rollback_every=3, rollback_lr_factor=0.5) as w:
        for i, (x, y) in enumerate(batches(9)):
            model[2].armed = i == 7
            if i == 6:   # the snapshot is taken at step 6's pre-step: this state
                snaps["params"] = [p.detach().clone() for p in model.parameters()]
            step(model, opt, x, y, w)
            if i == 7:
                after = [p.detach().clone() for p in model.parameters()]
                lr = opt.param_groups[0]["lr"]
    assert all(torch.equal(a, b) for a, b in zip(snaps["params"], after))
    assert lr == pytest.approx(5e-3)
    ev = [e for e in w.events if e.kind == "guard"]
    assert len(ev) == 1 and ev[0].evidence["action"] == "rollback" and ev[0].evidence["to_step"] == 6
    assert ev[0].evidence["lr_after"] == pytest.approx(5e-3)
    assert [s.skip_reason for s in w.history if s.skipped] == ["rollback"]


def test_rollback_to_disk(tmp_path):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with watch(model, opt, run_dir=tmp_path / "r", on_nonfinite="rollback", rollback_storage="disk",
                  rollback_lr_factor=None) as w:
        for i, (x, y) in enumerate(batches(4)):
            model[2].armed = i == 2
            step(model, opt, x, y, w)
    assert (tmp_path / "r" / "rollback.pt").exists()
    ev = [e for e in w.events if e.kind == "guard"]
    assert ev[0].evidence["action"] == "rollback" and ev[0].evidence["to_step"] == 0
    assert opt.param_groups[0]["lr"] == 0.1


def test_warn_records_and_warns_once_per_episode():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(WatchWarning, match="InfAfter") as rec:
        with watch(model, opt, on_nonfinite="warn") as w:
            for i, (x, y) in enumerate(batches(6)):
                model[2].armed = i >= 2
                step(model, opt, x, y, w)
    assert len([r for r in rec if "non-finite gradients" in str(r.message)]) == 1
    assert len(w.replays) == 1 and w.replays[0].step == 2
    assert not [e for e in w.events if e.kind == "guard"]


def test_rollback_restores_batchnorm_running_statistics():
    # A NaN batch poisons BatchNorm's running stats in the forward pass, before any guard can
    # act; the last known-good state must include the buffers, or eval() is NaN for good.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with watch(m, opt, on_nonfinite="rollback", rollback_every=1) as w:
        for s in range(4):
            x = torch.randn(16, 4)
            if s == 2:
                x[0, 0] = float("nan")
            loss = m(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert any(e.kind == "guard" and e.evidence.get("action") == "rollback" for e in w.events)
    assert torch.isfinite(m[1].running_mean).all() and torch.isfinite(m[1].running_var).all()
    m.eval()
    assert torch.isfinite(m(torch.randn(3, 4))).all()


def test_exhausted_skip_budget_says_so():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteError, match="max_consecutive_skips=2"):
        with watch(model, opt, on_nonfinite="skip", max_consecutive_skips=2) as w:
            for i, (x, y) in enumerate(batches(10)):
                model[2].armed = i >= 3
                step(model, opt, x, y, w)


@pytest.mark.parametrize("observe_first", [False, True])
def test_the_nan_loss_of_a_skipped_unlogged_step_is_kept(observe_first):
    # every=10 and no detail steps: step 3 is not on the schedule, but the guard logs it;
    # its loss must be there
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with watch(m, opt, on_nonfinite="skip", every=10, detail_every=never()) as w:
        for s in range(5):
            x = torch.randn(5, 4)
            if s == 3:
                x[0, 0] = float("nan")
            loss = m(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            if observe_first:
                w.observe(loss)
            opt.step()
            if not observe_first:
                w.observe(loss)
    rows = {st.step: st for st in w.history}
    assert 3 in rows and rows[3].skipped
    assert rows[3].loss is not None and math.isnan(rows[3].loss)


def _two_optimizer_run(watched: bool, drop_bad: bool):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    o1 = torch.optim.SGD(m[0].parameters(), lr=0.1, momentum=0.9)
    o2 = torch.optim.SGD(m[2].parameters(), lr=0.1, momentum=0.9)
    w = watch(m, [o1, o2], on_nonfinite="skip", detail_every=1) if watched else None
    g = torch.Generator().manual_seed(1)
    for s in range(5):
        x = torch.randn(5, 4, generator=g)
        if s == 2 and drop_bad:
            continue
        o1.zero_grad()
        o2.zero_grad()
        m(x).pow(2).mean().backward()
        if s == 2:
            m[2].weight.grad[0, 0] = float("nan")   # in o2's parameters only
        o1.step()   # (o1 steps first: its own gradients are finite)
        o2.step()
    if w is not None:
        w.remove()
    return m, (o1, o2), w


def test_a_bad_gradient_skips_every_optimizer_of_the_step():
    """Parameters split over two optimizers (Muon for the matrices and AdamW for the rest, a
    backbone and a head): a NaN in o2's gradients skipped o2 only, o1 applied the bad step, and
    the guard event still said "parameters and optimizer state untouched". Now each guard
    checks the other optimizers' gradients too. Oracle: the same training without the bad
    batch, bitwise (parameters and momentum buffers); one skipped step, one guard event."""
    m, opts, w = _two_optimizer_run(True, False)
    ref, ref_opts, _ = _two_optimizer_run(False, True)
    for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    for o, r in zip(opts, ref_opts):
        for p, q in zip(o.param_groups[0]["params"], r.param_groups[0]["params"]):
            assert torch.equal(o.state[p]["momentum_buffer"], r.state[q]["momentum_buffer"])
    st = {x.step: x for x in w.history}[2]
    assert st.skipped and (st.update_ratio[[0, 2]] == 0.0).all()
    assert [e.step for e in w.events if e.kind == "guard"] == [2]
    assert w.summary().startswith("5 steps watched, 1 skipped")


@pytest.mark.parametrize("policy", ["skip", "warn"])
def test_a_fault_on_an_unlogged_step_is_named(policy):
    """every=10: step 3 is off the schedule. Under a guard its forward is still captured, so the
    skipped step replays and names the layer whose output went NaN (the layer the test poisoned);
    unguarded ('warn') nothing reads step 3's gradients, and the NaN weights its update leaves
    are found at the next logged step (10) by a replay of that step's own capture."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    poison = {"on": False}

    def nan_out(mod, args, out):
        return out * float("nan") if poison["on"] else out

    m[2].register_forward_hook(nan_out)
    with watch(m, opt, on_nonfinite=policy, every=10, detail_every=never()) as w:
        for s in range(12):
            poison["on"] = s == 3
            loss = m(torch.randn(5, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.observe(loss)
    rows = {st.step: st for st in w.history}
    if policy == "skip":
        assert rows[3].skipped and rows[3].origin["module"] == "2"
        assert torch.isfinite(m[2].weight).all()
    else:   # step 3's NaN gradients reached every layer: the first in forward order is named
        assert 3 not in rows and not any(torch.isfinite(m[i].weight).all() for i in (0, 2, 4))
        o = rows[10].origin
        assert o is not None and o["module"] == "0" and o["cause"] == "nonfinite_params"
