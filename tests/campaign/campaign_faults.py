"""A seeded fault-injection campaign: models, injected faults, and a training loop.

A fault is injected *inside* a chosen module at one step: its forward output becomes NaN/Inf
("forward"), or the gradient flowing back through it does ("backward"), the way a real
fault inside the module's own computation (an overflow, a sqrt at 0) would. The injection
is keyed to the training step, so re-running the step (the forensic replay) reproduces it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


class _Clock:
    step = -1


class _BadGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.value, None


@dataclass
class Fault:
    module: str       # qualified name of the module that goes bad
    where: str        # "forward" or "backward"
    value: float      # nan, inf or -inf
    step: int


def inject(model: nn.Module, fault: Fault, clock: type[_Clock]) -> None:
    mod = model.get_submodule(fault.module)
    orig = mod.forward

    def forward(*args, **kwargs):
        full = orig(*args, **kwargs)
        if clock.step != fault.step:
            return full
        out = full[0] if isinstance(full, tuple) else full   # (output, state) of recurrent layers
        if not isinstance(out, torch.Tensor):
            return full
        out = _bad(out, fault)
        return (out,) + tuple(full[1:]) if isinstance(full, tuple) else out

    mod.forward = forward


def _bad(out: torch.Tensor, fault: Fault) -> torch.Tensor:
    if fault.where == "forward":
        bump = torch.zeros(out.numel(), dtype=out.dtype, device=out.device)
        bump[-1] = fault.value   # the last entry: reaches the loss through out[:, -1] too
        return out + bump.view_as(out)
    return _BadGrad.apply(out, fault.value) if out.requires_grad else out


class BNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.head(self.features(x.view(-1, 1, 8, 8)))


class Tx(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True),
                                         2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.enc(self.emb(x.view(-1, 8, 8))).mean(1))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.lstm(x.view(-1, 8, 8))
        return self.head(out[:, -1])


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(32, 10))


MODELS = {"mlp": mlp, "bncnn": BNCNN, "tx": Tx, "lstm": LSTMNet}

#: (model, module that goes bad, the name(s) an honest diagnosis may give)
SITES = [
    ("mlp", "0", {"0"}), ("mlp", "2", {"2"}),
    ("bncnn", "features.1", {"features.1"}), ("bncnn", "features.3", {"features.3"}),
    ("bncnn", "features", {"features"}), ("bncnn", "head.1", {"head.1", "head"}),
    ("tx", "enc.layers.0.linear1", {"enc.layers.0.linear1"}), ("tx", "enc.layers.1", {"enc.layers.1"}),
    ("tx", "emb", {"emb"}),
    ("lstm", "lstm", {"lstm"}), ("lstm", "head", {"head"}),
]


def data(seed=0, n=12, batch=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def train(model, opt, batches, clock, watcher=None, before=None, after=None):
    """Plain loop; returns the losses. ``before(step)`` runs before each forward, ``after(step)``
    after each optimizer step."""
    losses = []
    for s, (x, y) in enumerate(batches):
        clock.step = s
        if before is not None:
            before(s)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if after is not None:
            after(s)
        if watcher is not None:
            watcher.observe(loss)
        losses.append(float(loss.detach()))
    return losses


def state_of(model, opt) -> dict:
    """Everything a skipped step must leave bitwise unchanged."""
    return {"params": [p.detach().clone() for p in model.parameters()],
            "buffers": [b.detach().clone() for b in model.buffers()],
            "opt": copy.deepcopy(opt.state_dict())}


def same_state(a: dict, b: dict) -> bool:
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.shape == y.shape and bool(
                torch.equal(torch.nan_to_num(x, nan=1234.5), torch.nan_to_num(y, nan=1234.5)))
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return x == y
    return eq(a["params"], b["params"]) and eq(a["buffers"], b["buffers"]) and eq(a["opt"], b["opt"])
