"""BatchNorm running statistics that go inf/NaN while the gradients stay finite (a batch of huge
values): training mode uses the batch's statistics, so only ``model.eval()`` shows it. The
watcher must say so (issue 9). Oracle: the buffers themselves, inspected after the run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradhealth


def _run(huge_at, on_nonfinite="warn", detail_every=1, steps=8):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(3)
    bad_from = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt, on_nonfinite=on_nonfinite, detail_every=detail_every) as w:
            for s in range(steps):
                x = torch.randn(16, 4, generator=g)
                if s == huge_at:
                    x = x * 1e25
                loss = m(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in m.parameters())
                opt.step()
                w.observe(loss)
                if bad_from is None and not bool(torch.isfinite(m[1].running_var).all()):
                    bad_from = (s, grads_finite)
    return m, w, bad_from


def _buffer_events(w):
    return [e for e in w.events if "buffers" in e.evidence]


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_poisoned_running_stats_are_an_event(on_nonfinite):
    m, w, bad_from = _run(3, on_nonfinite)
    assert bad_from == (3, True)              # the fault: buffers inf from step 3, gradients finite
    m.eval()
    with torch.no_grad():     # what the user would meet later: NaN, or one constant output
        out = m(torch.randn(4, 4))
    assert not bool(torch.isfinite(out).all()) or bool((out == out[0]).all())
    evs = _buffer_events(w)
    assert len(evs) == 1, [(e.step, e.kind, e.message) for e in w.events]   # said once
    e = evs[0]
    assert e.step == 3 and e.layer == "1" and "1.running_var" in e.evidence["buffers"]
    assert "model.eval()" in e.message and "reset_running_stats" in e.remedy


def test_the_default_schedule_reports_it_at_a_detail_step():
    _, w, bad_from = _run(3, detail_every=None, steps=40)
    assert bad_from is not None
    evs = _buffer_events(w)
    assert evs and evs[0].step >= 3


def test_a_healthy_batchnorm_run_has_no_buffer_event():
    m, w, bad_from = _run(None)
    assert bad_from is None and _buffer_events(w) == []


class _Masked(nn.Module):
    """A -inf causal mask (non-finite by design, from the start) beside a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.register_buffer("causal_mask", torch.full((4, 4), float("-inf")).triu(1))
        self.fc, self.bn, self.out = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)

    def forward(self, x):
        att = torch.softmax(x[:, :4].unsqueeze(1).expand(-1, 4, -1) + self.causal_mask, -1)
        return self.out(self.bn(self.fc((att @ x[:, :4].unsqueeze(-1)).squeeze(-1))))


def test_a_buffer_non_finite_by_design_is_not_reported_and_hides_nothing():
    torch.manual_seed(0)
    m = _Masked()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt, detail_every=1) as w:
            for s in range(6):
                x = torch.randn(16, 4) * (1e25 if s == 4 else 1.0)
                loss = m(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
    assert not bool(torch.isfinite(m.bn.running_var).all())       # the real fault happened
    evs = _buffer_events(w)
    assert [e.step for e in evs] == [4], [(e.step, e.message) for e in evs]
    assert evs[0].evidence["buffers"] == ["bn.running_var"] or "bn.running_var" in evs[0].evidence["buffers"]
    assert all("causal_mask" not in b for e in evs for b in e.evidence["buffers"])
