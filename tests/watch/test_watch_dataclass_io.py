"""Models whose batch or output is a dataclass (pytree keeps dataclasses as opaque leaves): the
replay must still see the tensors inside. Oracle: the injected fault's step and module, and
the NaN planted in the batch."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.watch.replay import tensor_leaves


@dataclass
class Batch:
    x: torch.Tensor
    note: str = "meta"


@dataclass
class Out:
    logits: torch.Tensor
    aux: dict


class _BadGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


class Net(nn.Module):
    def __init__(self, bad_at=None):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.bad_at, self.step = bad_at, 0

    def forward(self, batch: Batch) -> Out:
        h = torch.tanh(self.a(batch.x))
        h = self.b(h)
        if self.step == self.bad_at:       # keyed to the step: a re-run reproduces it
            h = _BadGrad.apply(h)
        h = torch.tanh(h)
        return Out(self.c(h), {"h": h})


def _run(on_nonfinite, bad_at=None, nan_at=None, steps=6):
    torch.manual_seed(0)
    model = Net(bad_at)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, every=1, on_nonfinite=on_nonfinite) as w:
            for s in range(steps):
                model.step = s
                x = torch.randn(16, 6, generator=g)
                if s == nan_at:
                    x[2, 1] = math.nan
                out = model(Batch(x))
                loss = out.logits.pow(2).mean() + 0.1 * out.aux["h"].pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.observe(loss)
    return w


def test_tensor_leaves_descends_into_dataclasses():
    t1, t2, t3 = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    got = tensor_leaves((Batch(t1), {"o": Out(t2, {"h": [t3]})}, 7))
    assert [id(t) for t in got] == [id(t1), id(t2), id(t3)]


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_a_backward_fault_behind_a_dataclass_output_reproduces_and_is_named(on_nonfinite):
    w = _run(on_nonfinite, bad_at=3)
    rep = w.replays[0]
    assert rep.step == 3 and rep.found and not rep.transient, rep.summary
    # the fault sits in the model's own forward code right after 'b' (not inside a module)
    assert (rep.module, rep.cause) == ("", "functional_code"), (rep.module, rep.cause, rep.summary)
    assert "'b'" in rep.summary


@pytest.mark.parametrize("on_nonfinite", ["warn", "skip"])
def test_a_nan_in_a_dataclass_batch_is_blamed_on_the_input(on_nonfinite):
    w = _run(on_nonfinite, nan_at=2)
    rep = w.replays[0]
    assert rep.step == 2 and rep.found and rep.cause == "nonfinite_input", (rep.cause, rep.summary)
    bad = [e for e in w.events if e.kind in ("nonfinite", "guard") and e.step == 2]
    assert bad and all("clip_grad_norm_" not in e.remedy for e in bad), [e.remedy for e in bad]
