"""The four canonical broken networks, their remedies, and an independent before/after check
(internal demo fixtures: shared by the cure gallery section, the evidence tests and the docs).

Each :class:`Case` builds a small broken model, names the prescribed remedy as code, applies
it, and trains both versions for a short run on real data (``load_digits``) or a synthetic
sequence task. :func:`backward_profile` measures the backward signal per layer (or per time
step) with plain autograd hooks, independently of :mod:`gradhealth.probe`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..remedies import critical_, gaussian_, he_, orthogonal_, replace_activation_

__all__ = ["Case", "CASES", "digits", "delay_task", "backward_profile", "train", "mlp"]


# --- data -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """``sklearn.datasets.load_digits`` (1797 8x8 images, shipped with scikit-learn), standardised.

    Cached: treat the tensors as read-only."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(y)


def delay_task(n: int, steps: int = 100, delay: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of N(0, 1) inputs; the target at step t is the input at step t - delay."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 1, generator=g)
    y = torch.zeros(n, steps)
    y[:, delay:] = x[:, :-delay, 0]
    return x, y


# --- models ---------------------------------------------------------------------------------------
def mlp(depth: int, width: int, act: type[nn.Module], d_in: int = 64, d_out: int = 10) -> nn.Sequential:
    """``depth`` Linear layers of width ``width`` with ``act`` between them."""
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class SeqNet(nn.Module):
    """A vanilla tanh RNN with a linear read-out at every step."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])[..., 0]


def _tanh_chaotic(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = mlp(40, 64, nn.Tanh)
    gaussian_(m, sigma_w2=4.0)
    return m


def _sigmoid_default(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(10, 64, nn.Sigmoid)  # torch's default init


def _linear_identity(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = mlp(20, 64, nn.Identity)
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, nn.Linear):
                if layer.weight.shape[0] == layer.weight.shape[1]:
                    layer.weight.copy_(1.5 * torch.eye(layer.weight.shape[0]))
                layer.bias.zero_()
    return m


def _rnn_radius(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = SeqNet()
    with torch.no_grad():
        w = m.rnn.weight_hh_l0
        w.mul_(3.0 / torch.linalg.eigvals(w).abs().max())
    return m


@dataclass(frozen=True)
class Case:
    """A canonical broken network and its remedy.

    Attributes:
        slug: short name (``"tanh_chaotic"``).
        title: one line for a person.
        build: ``build(seed) -> model`` (broken).
        remedy: the prescribed code, as a user would type it (``model`` is the model).
        apply: applies ``remedy`` in place.
        task: ``"digits"`` (10-class cross-entropy) or ``"delay"`` (MSE, 100-step sequences).
        optimizer, lr, steps: the short training run (``"sgd"``: momentum 0.9; ``"adam"``;
            batch 128 on digits, 32 on the delay task), chosen so that the *repaired* model
            trains reliably across seeds.
        recurrent: the backward signal is measured through time instead of over layers.
    """

    slug: str
    title: str
    build: Callable[[int], nn.Module]
    remedy: str
    apply: Callable[[nn.Module], object]
    task: str
    optimizer: str
    lr: float
    steps: int
    recurrent: bool = False


CASES: tuple[Case, ...] = (
    Case("tanh_chaotic", "deep tanh MLP (40 layers) with sigma_w2 = 4", _tanh_chaotic,
         "gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.0)",
         lambda m: critical_(m, activation="tanh", sigma_b2=0.0), "digits", "adam", 1e-3, 60),
    Case("sigmoid_default", "deep sigmoid MLP (10 layers), default init", _sigmoid_default,
         "gradhealth.remedies.replace_activation_(model, 'sigmoid', 'relu'); gradhealth.remedies.he_(model)",
         lambda m: (replace_activation_(m, "sigmoid", "relu"), he_(m)), "digits", "sgd", 0.05, 100),
    Case("linear_1p5", "deep linear net (20 layers), W = 1.5 I", _linear_identity,
         "gradhealth.remedies.orthogonal_(model, gain=1.0)",
         lambda m: orthogonal_(m, gain=1.0), "digits", "sgd", 0.01, 100),
    Case("rnn_radius3", "vanilla tanh RNN, recurrent spectral radius 3, 100 steps", _rnn_radius,
         "gradhealth.remedies.critical_(model, distribution='orthogonal')",
         lambda m: critical_(m, distribution="orthogonal"), "delay", "adam", 0.01, 60, recurrent=True),
)


# --- an independent measure of the backward signal -----------------------------------------------
def backward_profile(model: nn.Module, x: torch.Tensor, recurrent: bool = False) -> list[float]:
    """``||dL/dh||`` at each Linear output (input to output), or at each time step's hidden
    state (first to last) for :class:`SeqNet`, with ``L`` a fixed random projection of the
    output at the last position (so that nothing but propagation shapes the profile)."""
    g = torch.Generator().manual_seed(123)
    if recurrent:
        rnn = model.rnn
        h = torch.zeros(1, x.shape[0], rnn.hidden_size)
        hs = []
        for t in range(x.shape[1]):
            h = rnn(x[:, t:t + 1], h)[1]
            h.retain_grad()
            hs.append(h)
        out = model.head(h[0])
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        return [float(v.grad.norm()) for v in hs]
    outs: list[torch.Tensor] = []

    def keep(mod, inp, o):
        o.retain_grad()
        outs.append(o)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        out = model(x)
    finally:
        for hk in hooks:
            hk.remove()
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    model.zero_grad(set_to_none=True)
    return [float(o.grad.norm()) for o in outs]


def train(model: nn.Module, task: str, optimizer: str, lr: float, steps: int, seed: int = 0,
          every: int = 10) -> list[float]:
    """A short training run; returns the full-data loss before it and every ``every`` steps
    (a non-finite loss is reported as ``inf``)."""
    g = torch.Generator().manual_seed(seed)
    if task == "digits":
        x, y = digits()
        loss_fn, bs = F.cross_entropy, 128
    else:
        x, y = delay_task(256)
        bs = 32

        def loss_fn(out, tgt):
            return ((out - tgt)[:, 3:] ** 2).mean()

    opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=lr))

    def full() -> float:
        with torch.no_grad():
            v = float(loss_fn(model(x), y))
        return v if math.isfinite(v) else math.inf

    curve = [full()]
    for s in range(steps):
        idx = torch.randint(0, len(x), (bs,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (s + 1) % every == 0 or s + 1 == steps:
            curve.append(full())
    return curve
