"""``optimizer.step(closure)``: the closure computes the gradients inside ``step``, after the
step pre-hooks. The watcher must report each step's own gradients (not the previous step's),
name a non-finite step at the step it happened, and run the closure once per step (the guard's
wrapper and the watcher's hook must not both run it). Oracle: the norms computed by hand inside
the closure, right after its backward."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradhealth


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(opt_cls, steps, on_nonfinite="warn", nan_at=None, **opt_kw):
    model = _model()
    opt = opt_cls(model.parameters(), **opt_kw)
    g = torch.Generator().manual_seed(1)
    calls, first_norms = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, every=1, on_nonfinite=on_nonfinite) as w:
            for s in range(steps):
                x = torch.randn(16, 6, generator=g)
                if s == nan_at:
                    x[3, 2] = float("nan")

                def closure(s=s, x=x):
                    opt.zero_grad()
                    loss = model(x).pow(2).mean()
                    loss.backward()
                    calls.append(s)
                    first_norms.setdefault(s, math.sqrt(sum(float(p.grad.double().pow(2).sum())
                                                            for p in model.parameters())))
                    return loss

                loss = opt.step(closure)
                w.observe(loss)
    return w, calls, first_norms


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_each_step_reports_its_own_gradients(on_nonfinite):
    w, calls, want = _train(torch.optim.SGD, 6, on_nonfinite, lr=0.05)
    hist = list(w.history)
    assert [h.step for h in hist] == list(range(6))
    for h in hist:
        assert h.global_grad_norm == pytest.approx(want[h.step], rel=1e-5)
    assert calls == list(range(6))          # the closure ran once per step


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_a_nan_batch_is_named_at_its_own_step(on_nonfinite):
    w, calls, _ = _train(torch.optim.SGD, 5, on_nonfinite, nan_at=2, lr=0.05)
    bad = [e for e in w.events if e.kind == "nonfinite"]
    assert bad, [e.kind for e in w.events]
    assert min((e.since if e.since is not None else e.step) for e in bad) == 2
    assert "input batch of step 2" in bad[0].message      # the replay re-ran this step's batch
    assert calls == list(range(5))


def test_lbfgs_sees_the_first_closure_evaluation():
    w, calls, want = _train(torch.optim.LBFGS, 3, lr=0.5, max_iter=4)
    hist = list(w.history)
    assert [h.step for h in hist] == [0, 1, 2]
    for h in hist:
        assert h.global_grad_norm == pytest.approx(want[h.step], rel=1e-5)
    assert len(calls) > 3                    # LBFGS re-evaluates; the first call is not repeated
    assert all(calls.count(s) <= 5 for s in range(3))


class _SAM(torch.optim.Optimizer):
    """A sharpness-aware step (after davda54/sam): perturb the weights along the gradient, call
    the closure for the gradient there, restore, then step. Its closure must not be run early."""

    def __init__(self, params, rho=0.05, lr=0.1):
        super().__init__(params, {"rho": rho, "lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm() for p in ps]))
        eps = [p.grad * (self.defaults["rho"] / (norm + 1e-12)) for p in ps]
        for p, e in zip(ps, eps):
            p.add_(e)
        with torch.enable_grad():
            closure()
        for p, e in zip(ps, eps):
            p.sub_(e)
            p.sub_(self.defaults["lr"] * p.grad)


class _Scaled(torch.optim.SGD):
    def step(self, scale=1.0):   # a custom step whose first argument is not a closure
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        return super().step()


def _sam_weights(watched):
    model = _model()
    opt = _SAM(model.parameters())
    g = torch.Generator().manual_seed(2)
    ctx = gradhealth.watch(model, opt) if watched else None
    for _ in range(3):
        x = torch.randn(16, 6, generator=g)

        def closure(x=x):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        closure()
        opt.step(closure)
    if ctx is not None:
        ctx.remove()
    return [p.detach().clone() for p in model.parameters()]


def test_an_optimizer_with_its_own_step_is_left_alone():
    """Oracle: the same SAM run without the watcher (the old behaviour ran SAM's closure early
    and changed its update)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watched, bare = _sam_weights(True), _sam_weights(False)
    assert all(torch.equal(a, b) for a, b in zip(watched, bare))


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_a_step_argument_that_is_not_a_closure_is_not_called(on_nonfinite):
    model = _model()
    opt = _Scaled(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, on_nonfinite=on_nonfinite):
            model(torch.randn(4, 6)).sum().backward()
            opt.step(0.5)      # raised TypeError: 'float' object is not callable
