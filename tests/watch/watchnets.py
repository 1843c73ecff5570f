"""Textbook broken (and healthy) networks and a tiny training loop for the watch tests."""

from __future__ import annotations

import math

import torch
from torch import nn

from gradhealth.watch import watch


def mlp(depth, width, act, init=None, din=16, dout=4):
    layers, d = [], din
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if init is not None:
            init(lin)
        layers.append(lin)
        if act is not None:
            layers.append(act())
        d = width
    layers.append(nn.Linear(d, dout))
    return nn.Sequential(*layers)


def gaussian_init(sigma_w2, sigma_b2=0.0):
    def f(lin):
        nn.init.normal_(lin.weight, 0.0, math.sqrt(sigma_w2 / lin.in_features))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(sigma_b2)) if sigma_b2 else nn.init.zeros_(lin.bias)
    return f


def identity_init(scale):
    def f(lin):
        with torch.no_grad():
            lin.weight.copy_(scale * torch.eye(lin.out_features, lin.in_features))
            lin.bias.zero_()
    return f


def he_init(lin):
    nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
    nn.init.zeros_(lin.bias)


class VanillaRNN(nn.Module):
    """nn.RNN whose recurrent matrix has a given spectral radius; classifies the last step."""

    def __init__(self, radius, hidden=32, din=8, dout=4, seed=0):
        super().__init__()
        self.rnn = nn.RNN(din, hidden, batch_first=True)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(hidden, hidden, generator=g)
            w *= radius / torch.linalg.eigvals(w).abs().max()
            self.rnn.weight_hh_l0.copy_(w)
        self.head = nn.Linear(hidden, dout)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class InfAfter(nn.Module):
    """Identity until ``self.armed`` is set, then multiplies its input by inf."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return x * math.inf if self.armed else x


def data(n=512, din=16, dout=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=g)
    w = torch.randn(din, dout, generator=g)
    return x, (x @ w).argmax(1)


def digits():
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.asarray(y), dtype=torch.long)


def train(model, steps=20, *, lr=1e-2, opt=None, x=None, y=None, batch=64, clip=None,  # noqa: PLR0913
          before_step=None, seed=2, observe=True, **watch_kw):
    """Train ``model`` under watch for ``steps`` SGD steps; returns the watcher.

    (A test helper: every knob is a keyword the calling test names.)"""
    if x is None:
        x, y = data(din=model[0].in_features if isinstance(model, nn.Sequential) else 16)
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    with watch(model, opt, **watch_kw) as w:
        for i in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            if before_step is not None:
                before_step(i, model, opt)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
            if observe:
                w.observe(loss)
    return w


def kinds(w, exclude=("internal",)):
    return [e.kind for e in w.events if e.kind not in exclude]
