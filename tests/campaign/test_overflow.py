"""Finite gradients whose norm overflows (issue 9): the guard, the clipping functions and the
optimizer state. Oracle: the same norms computed in float64 from the same gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.remedies import clip_by_layer_norm_, clip_grad_norm_
from gradhealth.watch import WatchWarning


def _true_norm(grads) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])

def test_clip_grad_norm_bounds_finite_gradients_whose_norm_overflows(dtype):
    p = nn.Parameter(torch.zeros(64, dtype=dtype))
    p.grad = torch.full((64,), 3e19, dtype=dtype)   # entries finite; sum of squares is not (fp32/bf16)
    assert torch.isfinite(p.grad).all()
    clip_grad_norm_([p], 1.0)
    assert _true_norm([p.grad]) <= 1.0 + 1e-2


def test_clip_by_layer_norm_bounds_overflowing_layers():
    m = nn.Linear(8, 8)
    m.weight.grad = torch.full_like(m.weight, 5e19)
    m.bias.grad = torch.zeros_like(m.bias)
    clip_by_layer_norm_(m, 1.0)
    assert _true_norm([m.weight.grad, m.bias.grad]) <= 1.0 + 1e-3


def _run(on_nonfinite, steps=8, bad=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, 16, 4, generator=g)
    ys = torch.randint(0, 3, (steps, 16), generator=g)
    xs[bad, 0, 0] = 1e30   # one huge (finite) input
    snap = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, on_nonfinite=on_nonfinite) as w:
            for s in range(steps):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[s]), ys[s])  # bounded logit gradients
                loss.backward()
                if s == bad:
                    grads = [p.grad for p in model.parameters()]
                    snap["finite_entries"] = all(bool(torch.isfinite(x).all()) for x in grads)
                    snap["before"] = [p.detach().clone() for p in model.parameters()]
                opt.step()
                if s == bad:
                    snap["after"] = [p.detach().clone() for p in model.parameters()]
                w.observe(loss)
    return w, snap


def test_an_overflowing_norm_is_a_bad_step_the_guard_skips():
    w, snap = _run("skip")
    assert snap["finite_entries"]       # the scenario: finite entries ...
    st = {s.step: s for s in w.history}[3]
    assert st.skipped                    # ... and the guard did not let the update through
    assert all(torch.equal(a, b) for a, b in zip(snap["before"], snap["after"]))
    bad = [e for e in w.events if e.step == 3]
    assert bad and any("overflow" in e.message.lower() for e in bad)
    assert not any(e.remedy and "skip_nonfinite" in e.remedy for e in bad)


def test_a_non_finite_optimizer_state_after_a_step_is_an_event():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt) as w:
            for s in range(4):
                opt.zero_grad()
                x = torch.randn(8, 4)
                if s == 2:
                    x[0, 0] = 1e25    # grad^2 overflows float32 in exp_avg_sq
                model(x).pow(2).mean().backward()
                opt.step()
    assert not all(bool(torch.isfinite(v).all()) for st in opt.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor))
    assert any(e.step == 2 and "optimizer state" in e.message for e in w.events)


def test_warn_mode_reports_the_overflow_with_the_true_norm():
    w, snap = _run("warn")
    assert snap["finite_entries"]
    ev = [e for e in w.events if e.step == 3 and e.kind == "overflow"]
    assert len(ev) == 1 and "overflows float32" in ev[0].message
    assert "skip_nonfinite" not in (ev[0].remedy or "")
    st = {s.step: s for s in w.history}[3]
    # oracle: the float64 norm of the same gradients, recomputed from scratch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(8, 16, 4, generator=g)
    ys = torch.randint(0, 3, (8, 16), generator=g)
    xs[3, 0, 0] = 1e30
    for s in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs[s]), ys[s]).backward()
        if s < 3:
            opt.step()
    true = _true_norm([p.grad for p in model.parameters()])
    assert true > 1.9e19 and math.isfinite(st.global_grad_norm)
    assert st.global_grad_norm == pytest.approx(true, rel=1e-5)
    assert ev[0].evidence["max_norm"] <= true * (1 + 1e-6)


def test_the_guard_check_failing_lets_training_go_on(monkeypatch):
    from gradhealth.remedies import guards

    def broken(params):
        raise RuntimeError("injected check failure")
    monkeypatch.setattr(guards, "bad_grads", broken)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    with pytest.warns(WatchWarning, match="injected check failure"):
        with gradhealth.watch(model, opt, on_nonfinite="skip") as w:
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()   # must not raise
    assert not torch.equal(before, model.weight)   # the steps went through
    internal = [e for e in w.events if e.kind == "internal"]
    assert len(internal) == 1 and internal[0].evidence["site"] == "guard"


def test_a_standalone_guard_whose_check_fails_warns_once():
    from gradhealth.remedies import guards, skip_nonfinite

    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = skip_nonfinite(opt)
    orig = guards.bad_grads
    guards.bad_grads = lambda params: (_ for _ in ()).throw(ValueError("boom"))
    try:
        with pytest.warns(RuntimeWarning, match="boom") as rec:
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(8, 4)).sum().backward()
                opt.step()
        assert len([r for r in rec if "boom" in str(r.message)]) == 1
    finally:
        guards.bad_grads = orig
        guard.remove()


def test_a_poisoned_optimizer_state_is_reported_after_the_step_events_that_caused_it():
    # a NaN in the batch: the step's non-finite gradient event (with the replay's "the input
    # batch already contains non-finite values") is the cause and comes first; the optimizer
    # state it poisoned (Adam's moments, found at the post-step hook) follows it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt) as w:
            for s in range(4):
                x = torch.randn(16, 4)
                if s == 2:
                    x[0, 0] = float("nan")
                loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
    at2 = [e for e in w.events if e.step == 2]
    state = [k for k, e in enumerate(at2) if "optimizer state" in e.message]
    grads = [k for k, e in enumerate(at2) if e.kind == "nonfinite" and "gradients" in e.message]
    assert state and grads, [(e.kind, e.message[:60]) for e in at2]
    assert max(grads) < min(state)
    assert "input batch" in at2[min(grads)].message


def test_an_infinite_second_moment_is_said_to_freeze_the_parameters():
    """One batch of 1e15-scaled inputs under Adam: the gradients are finite, exp_avg_sq
    overflows to inf, and from then on Adam's update m / sqrt(v) is exactly 0 -- the
    parameters freeze (not NaN). Oracle: the parameters themselves after the outlier."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt) as w:
            for s in range(50):
                x = torch.randn(32, 8, generator=g) * (1e15 if s == 40 else 1.0)
                loss = m(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
                if s == 41:
                    frozen = m[0].weight.detach().clone()
    assert torch.equal(frozen, m[0].weight) and bool(torch.isfinite(m[0].weight).all())
    state = [e for e in w.events if e.evidence.get("optimizer_state")]
    assert len(state) == 1 and state[0].step == 40
    assert "stop learning" in state[0].message and "'exp_avg_sq'" in state[0].message
