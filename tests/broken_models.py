"""Broken models that several test modules build: one definition each (import them from here;
``tests/`` is on the path through its conftest)."""

from __future__ import annotations

import torch
from torch import nn

from gradhealth.gallery._cases import mlp


class FunctionalMLP(nn.Module):
    """Linear layers with a functional activation (no activation module)."""

    def __init__(self, depth, width, act, din=64, dout=10):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(din if i == 0 else width, width) for i in range(depth - 1))
        self.out = nn.Linear(width, dout)
        self.act = act

    def forward(self, x):
        for lin in self.layers:
            x = self.act(lin(x))
        return self.out(x)


class ReluCNN(nn.Module):
    """The issue's plain CNN on 8x8 images: functional ``torch.relu``, conv weights at ``scale``
    times He; with ``bn`` a BatchNorm after every conv. Takes (batch, 64) or (batch, 1, 8, 8)."""

    def __init__(self, depth=12, width=8, scale=3.0, bn=False):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(depth))
        if bn:
            self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(depth))
        self.head = nn.Linear(width * 8 * 8, 10)
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            c.weight.data.mul_(scale)
            nn.init.zeros_(c.bias)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        norms = getattr(self, "norms", None)
        for i, c in enumerate(self.convs):
            x = c(x)
            x = torch.relu(norms[i](x) if norms is not None else x)
        return self.head(x.flatten(1))


def dead_relu_mlp():
    """6 Linear layers with ReLU modules, He weights and every bias -3: the units are dead."""
    m = mlp(6, 64, nn.ReLU)
    for layer in m:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.constant_(layer.bias, -3.0)
    return m
