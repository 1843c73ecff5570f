"""Fixtures of the report tests: a real watched run with a NaN planted in one named layer,
layers with hostile names, and a real probe result."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

SCRIPT_NAME = "<script>alert(1)</script>"
ANSI_NAME = "\x1b[31mred\x1b[0m"
POISON_NAME = "poisoned"
POISON_STEP = 12
STEPS = 25


class Poison(nn.Linear):
    """A Linear whose output is NaN while ``armed`` (the training loop arms it for one step;
    the flag stays set until after optimizer.step, so forensic replay sees it too)."""

    armed = False

    def forward(self, x):
        y = super().forward(x)
        return y * math.nan if self.armed else y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module(SCRIPT_NAME, nn.Linear(6, 16))
        self.act = nn.Tanh()
        self.add_module(POISON_NAME, Poison(16, 16))
        self.add_module(ANSI_NAME, nn.Linear(16, 3))

    def forward(self, x):
        x = self.act(getattr(self, SCRIPT_NAME)(x))
        x = torch.relu(getattr(self, POISON_NAME)(x))
        return getattr(self, ANSI_NAME)(x)


def train_poisoned(run_dir, steps: int = STEPS, poison_step: int | None = POISON_STEP):
    """Train ``Net`` under gradhealth.watch (guard: skip) with NaN from ``poisoned`` at
    ``poison_step``; return the watcher."""
    import gradhealth
    from gradhealth.remedies import clip_grad_norm_

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(steps, 8, 6, generator=g)
    ys = torch.randint(0, 3, (steps, 8), generator=g)
    poison = getattr(model, POISON_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, run_dir=run_dir, on_nonfinite="skip") as w:
            for s in range(steps):
                poison.armed = s == poison_step
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[s]), ys[s])
                loss.backward()
                clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
                w.observe(loss)
    return w


@pytest.fixture(scope="session")
def poisoned_run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("poisoned") / "run"
    train_poisoned(d)
    return d


@pytest.fixture(scope="session")
def poisoned_html(poisoned_run_dir, tmp_path_factory):
    from gradhealth.report import Report

    return Report.from_run(poisoned_run_dir).to_html(tmp_path_factory.mktemp("html") / "report.html")


def sigmoid_mlp():
    """A 12-layer sigmoid MLP with default init (it vanishes) and a batch, seeded: (model, x)."""
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    return model, torch.randn(64, 32)


@pytest.fixture(name="sigmoid_mlp")
def sigmoid_mlp_fixture():
    """A fresh :func:`sigmoid_mlp` (tests may change the model)."""
    return sigmoid_mlp()


@pytest.fixture(scope="session")
def probe_result():
    """A real probe of a 12-layer sigmoid MLP with default init: vanishing gradients."""
    import gradhealth

    return gradhealth.probe(*sigmoid_mlp())
