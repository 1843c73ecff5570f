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
