"""The remedy of a non-finite step follows the cause the replay found (issue 9): a NaN made
by the loss or by functional code in forward() gets a fix of that code, never clipping (which
acts after the backward and cannot remove it), for the detector's event and the guard's alike.
Oracle: the fault planted at step 2."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.remedies import prescribe


class Net(nn.Module):
    def __init__(self, fault):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)
        self.fault, self.step = fault, 0

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.fault == "functional" and self.step == 2:
            h = torch.log(h - h.detach())          # log(0) = -inf in the model's own code
        return self.b(h)


def _loss(out, fault, step):
    if fault == "loss" and step == 2:
        return torch.sqrt((out - out.detach()).pow(2).mean())   # sqrt(0): an infinite gradient
    return out.pow(2).mean()


def _events(fault, on_nonfinite):
    torch.manual_seed(0)
    m = Net(fault)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt, on_nonfinite=on_nonfinite) as w:
            for s in range(4):
                m.step = s
                loss = _loss(m(torch.randn(8, 4)), fault, s)
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
    return [e for e in w.events if e.step == 2 and e.kind in ("nonfinite", "guard")]


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
@pytest.mark.parametrize("fault,marker", [("loss", "loss"), ("functional", "functional op")])
def test_the_remedy_fixes_the_cause(fault, marker, on_nonfinite):
    evs = _events(fault, on_nonfinite)
    assert evs, "no non-finite event at step 2"
    if on_nonfinite == "skip":
        assert any(e.kind == "guard" for e in evs)
    for e in evs:
        assert "clip_grad_norm_" not in e.remedy and "skip_nonfinite" not in e.remedy, (e.kind, e.remedy)
        assert marker in e.remedy, (e.kind, e.remedy)


@pytest.mark.parametrize("kind", ["nonfinite", "guard"])
@pytest.mark.parametrize("evidence,first", [
    ({"origin_cause": "loss_gradient"}, "loss"),
    ({"replay": {"cause": "functional_code", "module": ""}}, "functional op"),
    ({"replay": {"cause": "nonfinite_params", "module": "fc"}}, "rollback"),
    ({"origin_cause": "not_reproduced"}, "transient"),
    ({"origin_cause": "nonfinite_input"}, "data pipeline"),
])
def test_prescribe_puts_the_replay_cause_first(kind, evidence, first):
    rx = prescribe(kind, dict(evidence, lr=0.1))
    assert first in rx[0].code
    clip = any("clip_grad_norm_" in r.code for r in rx)
    assert clip == (first not in ("loss", "functional op", "data pipeline"))


def test_without_a_replay_cause_the_advice_is_unchanged():
    rx = prescribe("nonfinite", {"lr": 0.1})
    assert "skip_nonfinite" in rx[0].code and "clip_grad_norm_" in rx[1].code


def test_what_to_change_starts_with_the_cause_not_its_consequences(tmp_path):
    """A NaN batch at step 2 under "warn": the update spreads NaN into the parameters, which a
    later step reports as a critical event with its own remedy. The summary's first remedy is
    still the one for the batch (the earliest condition), not the consequence's."""
    from gradhealth.report.run_view import summarize
    from gradhealth.store import load_run
    from gradhealth.watch._advice import DATA_REMEDY

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt, run_dir=tmp_path / "run") as w:
            for s in range(8):
                x = torch.randn(8, 4)
                if s == 2:
                    x[1, 1] = float("nan")
                loss = m(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
    later = [e for e in w.events if e.step > 2 and e.kind == "nonfinite"]
    assert later and later[0].severity == "critical"      # the consequence, more severe
    rx = summarize(load_run(tmp_path / "run"))["remedies"]
    assert rx[0]["remedy"] == DATA_REMEDY, rx


def test_early_warnings_do_not_push_a_critical_remedy_out_of_the_summary():
    from gradhealth.events import Event
    from gradhealth.report.run_view import summarize

    class _Run:
        events = [Event(s, "grad_spike", f"l{s}", "warning", "m", {}, f"fix{s}") for s in range(5)]
        events.append(Event(100, "nonfinite", None, "critical", "NaN", {}, "skip it"))

    rx = [r["remedy"] for r in summarize(_Run())["remedies"]]
    assert rx[0] == "fix0" and rx[1] == "skip it", rx       # the earliest, then the most severe
