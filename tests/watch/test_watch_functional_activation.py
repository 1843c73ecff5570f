"""A model whose activations are functional (torch.relu in forward, no nn.ReLU modules) gets the
same rank-1 remedy from watch as from probe (issue 10: watch used to prescribe a gain-1
orthogonal init, which vanishes for ReLU). Oracle: probe's own prescription on the same model."""

from __future__ import annotations

import warnings

import torch
from broken_models import ReluCNN
from torch import nn

from gradhealth.probe import probe
from gradhealth.watch import WatchWarning, watch


def test_watch_prescribes_what_probe_prescribes_for_functional_relu():
    torch.manual_seed(0)
    model = ReluCNN()    # 3x He: the signal grows ~3x per layer
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    rx = probe(model, x, y, loss_fn=nn.functional.cross_entropy, jacobian=False)
    assert rx.verdict == "exploding"
    want = rx.prescriptions[0].code
    assert "he_" in want and "relu" in want
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            for _ in range(3):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    ev = [e for e in w.events if e.kind == "exploding"]
    assert ev, [(e.kind, e.message) for e in w.events]
    assert "orthogonal_" not in ev[0].remedy
    assert "he_" in ev[0].remedy and "relu" in ev[0].remedy, ev[0].remedy
