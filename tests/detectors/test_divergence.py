"""Early divergence on real (small) training runs: the oracle is what the run did afterwards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth.detectors import LayerTable, StepStats, run_detectors
from gradhealth.detectors.divergence import early_divergence

_T = LayerTable.simple(1)


def _stats(losses, norms=None):
    norms = norms if norms is not None else [1.0] * len(losses)
    return [StepStats(step=s, layers=_T, loss=l, global_grad_norm=g) for s, (l, g) in enumerate(zip(losses, norms))]


def _train(lr, opt="sgd", steps=40, seed=0, postln=False):
    """Loss and global gradient norm per step of a small model on digits."""
    from sklearn.datasets import load_digits

    X, Y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    Y = torch.tensor(Y)
    torch.manual_seed(seed)
    if postln:
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

        class Tx(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.enc, self.head = nn.Linear(8, 32), nn.TransformerEncoder(
                    layer, 2, enable_nested_tensor=False), nn.Linear(32, 10)

            def forward(self, x):
                return self.head(self.enc(self.emb(x.view(-1, 8, 8))).mean(1))
        m = Tx()
    else:
        m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if opt == "sgd":
        o = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    else:
        o = torch.optim.Adam(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses, norms = [], []
    for _ in range(steps):
        idx = torch.randint(0, len(X), (64,), generator=g)
        o.zero_grad()
        loss = nn.functional.cross_entropy(m(X[idx]), Y[idx])
        loss.backward()
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in m.parameters()])))
        losses.append(loss.item())
        o.step()
    return losses, norms


def _diverged(losses) -> bool:
    return any(not math.isfinite(x) for x in losses) or float(np.mean(losses[-5:])) > losses[0]


@pytest.mark.parametrize("lr,opt,postln", [(10.0, "sgd", False), (1.0, "adam", False), (2.0, "sgd", True)])
def test_a_diverging_run_is_reported_within_a_few_steps(lr, opt, postln):
    losses, norms = _train(lr, opt, postln=postln)
    assert _diverged(losses)   # the oracle: the run really diverged
    ev = run_detectors(early_divergence(), _stats(losses, norms))
    assert len(ev) == 1 and ev[0].kind == "divergence"
    first_bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), len(losses))
    assert ev[0].step <= 5 and ev[0].step < first_bad


@pytest.mark.parametrize("lr,opt,postln", [(0.05, "sgd", False), (1e-3, "adam", False), (1e-3, "adam", True)])
def test_a_healthy_run_stays_quiet(lr, opt, postln):
    losses, norms = _train(lr, opt, postln=postln)
    assert not _diverged(losses) and losses[-1] < losses[0]
    assert run_detectors(early_divergence(), _stats(losses, norms)) == []


def test_one_early_bump_that_recovers_stays_quiet():
    # a hard batch at step 2: 6x the loss for one step, then back
    assert run_detectors(early_divergence(), _stats([2.3, 2.2, 14.0, 2.1, 2.0, 1.9, 1.8])) == []
    # an Adam bump that falls back monotonically (seen in the calibration runs)
    assert run_detectors(early_divergence(), _stats([2.3, 17.0, 8.0, 6.1, 2.9, 2.3, 2.2])) == []


def test_high_and_rising_fires_at_the_second_step_above():
    ev = run_detectors(early_divergence(), _stats([2.0, 9.0, 30.0, 1e3]))
    assert [e.step for e in ev] == [2] and ev[0].since == 1


def test_norm_growing_every_step_fires_and_once_only():
    norms = [1.0, 2.0, 5.0, 12.0, 30.0, 100.0]
    ev = run_detectors(early_divergence(), _stats([2.0] * 6, norms))
    assert [e.step for e in ev] == [3]


def test_inactive_after_horizon_and_on_scaler_skips():
    seq = [StepStats(step=100 + s, layers=_T, loss=l) for s, l in enumerate([2.0, 50.0, 60.0, 70.0])]
    assert run_detectors(early_divergence(), seq) == []
    seq = [StepStats(step=s, layers=_T, loss=l, skip_reason="scaler") for s, l in enumerate([2.0, 50.0, 60.0, 70.0])]
    assert run_detectors(early_divergence(), seq) == []


def test_watch_reports_an_early_divergence_with_its_remedy():
    """End to end: the default detectors under watch, on a run with a far too high lr."""
    import warnings

    import gradhealth

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(m.parameters(), lr=10.0, momentum=0.9)
    from sklearn.datasets import load_digits

    X, Y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    Y = torch.tensor(Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(m, opt) as w:
            for s in range(12):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(m(X[s * 64:(s + 1) * 64]), Y[s * 64:(s + 1) * 64])
                loss.backward()
                opt.step()
                w.observe(loss)
    div = [e for e in w.events if e.kind == "divergence"]
    assert len(div) == 1 and div[0].step <= 6
    assert "LinearLR" in div[0].remedy
