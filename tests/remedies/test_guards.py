"""Skip-on-non-finite guard: skipped steps leave params and optimizer state bitwise unchanged."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from gradhealth.errors import NonFiniteError, ParameterError
from gradhealth.remedies import StepGuard, nonfinite_grads, skip_nonfinite


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}


def _snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict()))


def _bitwise_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a.view(-1).view(torch.uint8) if a.is_floating_point() and a.numel() else a,
                        b.view(-1).view(torch.uint8) if b.is_floating_point() and b.numel() else b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_bitwise_equal(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _train_step(model, opt, x, y, poison=None):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    if poison is not None:
        model[0].weight.grad[0, 0] = poison
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_skipped_step_leaves_params_and_state_bitwise_unchanged(name, poison):
    model = _model()
    opt = OPTIMIZERS[name](model.parameters())
    guard = skip_nonfinite(opt)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(3):  # build up momentum / moments / step counters first
        _train_step(model, opt, x, y)
    before = _snapshot(model, opt)
    _train_step(model, opt, x, y, poison=poison)  # step index 3 is poisoned
    after = _snapshot(model, opt)
    assert _bitwise_equal(before[0], after[0])
    assert _bitwise_equal(before[1], after[1])
    assert guard.skipped_steps == 1 and guard.consecutive_skips == 1 and guard.steps == 4
    # training continues: the next clean step changes the params again
    _train_step(model, opt, x, y)
    assert not _bitwise_equal(before[0], [p.detach() for p in model.parameters()])
    assert guard.consecutive_skips == 0 and guard.skipped_steps == 1


def test_guarded_run_matches_unguarded_run_minus_the_poisoned_step():
    """Skipping == the poisoned step never happened (same trajectory as a clean run without it)."""
    torch.manual_seed(1)
    m1 = _model()
    m2 = copy.deepcopy(m1)
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
    skip_nonfinite(o1)
    data = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(6)]
    for i, (x, y) in enumerate(data):
        _train_step(m1, o1, x, y, poison=math.nan if i == 2 else None)
        if i != 2:
            _train_step(m2, o2, x, y)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_budget_exceeded_raises_with_diagnosis_and_callback():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    guard = skip_nonfinite(opt, max_consecutive_skips=2, on_skip=seen.append, model=model)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    _train_step(model, opt, x, y)
    _train_step(model, opt, x, y, poison=math.nan)
    _train_step(model, opt, x, y, poison=math.inf)
    with pytest.raises(NonFiniteError, match="max_consecutive_skips=2") as exc:
        _train_step(model, opt, x, y, poison=math.nan)
    assert [d["action"] for d in seen] == ["skip", "skip", "raise"]
    assert [d["step"] for d in seen] == [1, 2, 3]
    assert [d["n_consecutive"] for d in seen] == [1, 2, 3]
    assert seen[0]["nonfinite"] == [{"param": "0.weight", "shape": [8, 4], "nan": 1, "inf": 0}]
    assert seen[1]["nonfinite"][0]["inf"] == 1
    assert exc.value.diagnosis["action"] == "raise"
    assert "0.weight" in str(exc.value)
    assert guard.skipped_steps == 2
    # a clean step resets the run
    _train_step(model, opt, x, y)
    assert guard.consecutive_skips == 0


def test_zero_budget_raises_on_first_nonfinite_step_and_none_is_unlimited():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    with skip_nonfinite(opt, max_consecutive_skips=0):
        with pytest.raises(NonFiniteError):
            _train_step(model, opt, x, y, poison=math.nan)
    with skip_nonfinite(opt, max_consecutive_skips=None) as g:
        for _ in range(30):
            _train_step(model, opt, x, y, poison=math.nan)
        assert g.skipped_steps == 30


def test_remove_restores_plain_step_and_context_manager():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "step" not in vars(opt)
    with skip_nonfinite(opt) as guard:
        assert "step" in vars(opt) and guard.active
    assert "step" not in vars(opt) and not guard.active
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    _train_step(model, opt, x, y, poison=math.nan)  # unguarded: NaN goes in
    assert torch.isnan(model[0].weight).any()
    guard.remove()  # idempotent


def test_closure_is_evaluated_once_and_checked():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = skip_nonfinite(opt)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    calls = []

    def closure(poison=None):
        calls.append(1)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if poison is not None:
            model[2].bias.grad[0] = poison
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(lambda: closure(math.nan))
    assert len(calls) == 1 and guard.skipped_steps == 1 and torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    loss = opt.step(closure=closure)
    assert len(calls) == 2 and guard.skipped_steps == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lbfgs_with_closure():
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    skip_nonfinite(opt)
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    l0 = float(closure().detach())
    for _ in range(3):
        opt.step(closure)
    assert float(closure().detach()) < l0


@pytest.mark.parametrize("before", [True, False])
def test_lr_scheduler_before_or_after_the_guard(before):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if before:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            guard = skip_nonfinite(opt)
        else:
            guard = skip_nonfinite(opt)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for _ in range(2):
            _train_step(model, opt, x, y)
            sched.step()
    assert guard.steps == 2 and opt.param_groups[0]["lr"] == pytest.approx(0.025)
    guard.remove()
    _train_step(model, opt, x, y)  # still works after removal (pass-through if wrapped later)


def test_nonfinite_grads_dtypes_sparse_and_missing_grads():
    ps = [torch.zeros(3, dtype=dt, requires_grad=True)
          for dt in (torch.float32, torch.float16, torch.bfloat16)]
    ps.append(torch.zeros(0, requires_grad=True))
    assert nonfinite_grads(ps).dtype == torch.bool and not bool(nonfinite_grads(ps))
    assert nonfinite_grads(ps).dim() == 0
    ps[0].grad = torch.ones(3)
    ps[1].grad = torch.full((3,), 60000.0, dtype=torch.float16)  # large but finite
    ps[2].grad = torch.full((3,), 3e38, dtype=torch.bfloat16)
    ps[3].grad = torch.zeros(0)  # empty: no identity for the inf-norm, must be skipped
    assert not bool(nonfinite_grads(ps))
    ps[1].grad[1] = math.inf
    assert bool(nonfinite_grads(ps))
    ps[1].grad[1] = 1.0
    ps[2].grad[0] = math.nan
    assert bool(nonfinite_grads(ps))
    ps[2].grad = None
    assert not bool(nonfinite_grads(ps))
    # sparse gradients (nn.Embedding(sparse=True))
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse and not bool(nonfinite_grads(emb.parameters()))
    emb.weight.grad._values()[0, 0] = math.nan
    assert bool(nonfinite_grads(emb.parameters()))


def test_nonfinite_grads_is_a_single_fused_reduction_without_item():
    # No host sync: the result is a tensor, and no Python bool was needed to produce it.
    ps = [nn.Parameter(torch.randn(5)) for _ in range(50)]
    for p in ps:
        p.grad = torch.randn(5)
    out = nonfinite_grads(ps)
    assert isinstance(out, torch.Tensor) and out.shape == ()


def test_bad_input():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ParameterError, match="max_consecutive_skips"):
        StepGuard(opt, max_consecutive_skips=-1)
    with pytest.raises(ParameterError, match="optimizer"):
        skip_nonfinite(model)
    with pytest.raises(ParameterError, match="on_skip"):
        skip_nonfinite(opt, on_skip=3)


def test_fused_optimizer_with_grad_scaler_leaves_overflow_to_the_scaler():
    # GradScaler passes fused optimizers scaled grads + found_inf: an overflow during the
    # scaler's back-off is not a NaN step, and the guarded run equals the unguarded one.
    def run(guarded):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.Adam(m.parameters(), lr=0.01, fused=True)
        sc = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
        guard = skip_nonfinite(opt, max_consecutive_skips=2) if guarded else None
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            loss = m(torch.randn(5, 4, generator=g) * 40).pow(2).mean()
            opt.zero_grad()
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
        return m, guard, sc

    (m1, guard, sc), (m0, _, _) = run(True), run(False)
    assert sc.get_scale() < 2.0 ** 127  # the scaler really did back off (overflow happened)
    assert guard.skipped_steps == 0
    for a, b in zip(m1.parameters(), m0.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_also_check_skips_on_another_optimizers_bad_gradient_and_never_raises_into_training():
    """``also_check`` (the watcher's other optimizers): a NaN there skips this optimizer's
    step too; a raising ``also_check`` lets the step through and reports to ``on_error``,
    never into the loop. Oracle: the parameters before the step (bitwise)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.tensor([1.0, float("nan")])
    seen = []
    g = StepGuard(opt, on_skip=seen.append, also_check=lambda: [b])
    opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and g.skipped_steps == 1
    assert [d["nonfinite"][0]["nan"] for d in seen] == [1]
    g.remove()
    errors = []

    def broken():
        raise RuntimeError("boom")
    g = StepGuard(opt, also_check=broken, on_error=errors.append)
    opt.step()   # goes through, unchecked
    assert torch.equal(a.detach(), torch.full((3,), 0.9)) and len(errors) == 1
    g.remove()
