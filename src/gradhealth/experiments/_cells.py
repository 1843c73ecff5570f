"""One cell of a trainability grid: build a net at ``(scale, depth)``, train it, measure it (torch).

Everything here runs inside a worker process as well as in the caller's: the functions take
plain data (a :class:`~gradhealth.experiments._spec.TrainabilitySpec`, floats, ints) and
return a plain dict, so the pool can ship them and the cache can store them as JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._spec import TrainabilitySpec

__all__ = ["TORCH_ACTIVATIONS", "PlainNet", "build_net", "train_cell", "init_gain", "load_data"]

#: Activation names of :mod:`gradhealth.theory` -> the torch function with the same definition.
TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "erf": torch.erf,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
    "hard_tanh": F.hardtanh,
    "selu": F.selu,
    "gelu": F.gelu,
    "swish": F.silu,
    "elu": F.elu,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,          # slope 0.01, as theory's default
}

#: Digits (and the generated set) are split by nothing: trainability is about training accuracy.
_N_CLASSES = 10


def load_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` float32 / int64 arrays: ``"digits"`` (scikit-learn's 1797 8x8 digits) or
    ``"blobs"`` (2000 points of a seeded 10-class Gaussian mixture in 64 dimensions).

    Features are standardised (zero mean, unit variance; constant pixels stay 0), so the first
    layer's pre-activations have variance about ``sigma_w2 + sigma_b2`` as the mean-field
    picture assumes for unit-length inputs.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float64), d.target.astype(np.int64)
    else:                                                   # "blobs", checked by the caller
        rng = np.random.default_rng(1234)
        centers = rng.standard_normal((_N_CLASSES, 64)) * 0.6
        y = rng.integers(0, _N_CLASSES, 2000)
        x = centers[y] + rng.standard_normal((y.size, 64))
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return x.astype(np.float32), y


class PlainNet(nn.Module):
    """``depth`` hidden layers of ``width`` units and a linear readout (the paper's plain net).

    ``variant``:

    * ``"plain"``: ``h_l = phi(W_l h_{l-1} + b_l)``;
    * ``"residual"``: ``h_1 = W_1 x + b_1``, then ``h_l = h_{l-1} + W_l phi(h_{l-1}) + b_l``
      (the reduced residual net of Yang & Schoenholz 2017), readout on ``h_depth``;
    * ``"layernorm"``: ``h_l = phi(LN(W_l h_{l-1} + b_l))``, LayerNorm without affine
      parameters, so every layer's pre-activations have length 1 whatever ``sigma_w2``.
    """

    def __init__(self, activation: str, depth: int, width: int, n_in: int, variant: str = "plain"):
        super().__init__()
        self.act = TORCH_ACTIVATIONS[activation]
        self.variant = variant
        self.width = width
        self.hidden = nn.ModuleList(nn.Linear(n_in if i == 0 else width, width) for i in range(depth))
        self.readout = nn.Linear(width, _N_CLASSES)

    def forward(self, x):
        h = x
        for i, lin in enumerate(self.hidden):
            if self.variant == "residual":
                h = lin(h) if i == 0 else h + lin(self.act(h))
            elif self.variant == "layernorm":
                h = self.act(F.layer_norm(lin(h), (self.width,)))
            else:
                h = self.act(lin(h))
        return self.readout(h)


def build_net(spec: TrainabilitySpec, sigma_w2: float, depth: int, n_in: int) -> nn.Module:
    """The seeded net of one cell: ``W ~ N(0, sigma_w2 / fan_in)``, ``b ~ N(0, sigma_b2)``.

    Every cell draws from the same seed, so cells share their standard-normal draws (common
    random numbers): across ``sigma_w2`` the weights differ only by the factor ``sigma_w``.
    The readout has variance ``1 / fan_in`` and zero bias in every cell.
    """
    net = PlainNet(spec.activation, depth, spec.width, n_in, spec.variant)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen)
                             * math.sqrt(sigma_w2 / lin.in_features))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * math.sqrt(spec.sigma_b2))
        net.readout.weight.copy_(torch.randn(net.readout.weight.shape, generator=gen)
                                 / math.sqrt(net.readout.in_features))
        net.readout.bias.zero_()
    return net


def init_gain(model: nn.Module, x: torch.Tensor, seed: int) -> float:
    """Backward gain per layer at initialisation, measured by :func:`gradhealth.probe.probe`.

    ``(g_first / g_last) ** (1 / (n - 1))`` over the ``n`` layers the probe gives a gain
    (``g``: the probe's backward gain from the model output to a layer's output, 1 at the
    output): the geometric mean growth of the backward signal per layer. For a plain fully
    connected net it estimates ``sqrt(chi_1)``; 1 is the edge of chaos. ``nan`` when the probe
    cannot measure it (fewer than two layers with a gain, or a non-finite forward pass).
    """
    from ..errors import GradHealthError
    from ..probe import probe

    try:
        res = probe(model, x, jacobian=False, n_probes=2, seed=seed)
    except GradHealthError:
        return math.nan
    gains = [lr.gain for lr in res.layers if lr.gain is not None and math.isfinite(lr.gain)]
    if len(gains) < 2 or gains[-1] <= 0 or gains[0] <= 0:
        return math.nan
    return float((gains[0] / gains[-1]) ** (1.0 / (len(gains) - 1)))


def _accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = model(x)
        if not bool(torch.isfinite(out).all()):
            return math.nan, math.nan
        loss = float(F.cross_entropy(out, y))
        return float((out.argmax(dim=1) == y).double().mean()), loss


def train_cell(spec: TrainabilitySpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               *, measure_gain: bool = True) -> dict:
    """Train ``model`` for ``spec.steps`` SGD steps on ``(x, y)``; the cell's measurements.

    Minibatches of ``spec.batch_size`` are drawn with replacement from a generator seeded by
    ``spec.seed`` (the same sequence in every cell). Training stops early only when the loss
    becomes non-finite (``diverged``). Accuracy and loss are measured on the whole training
    set after the last step (train accuracy: the paper's trainability).

    Returns:
        ``accuracy``, ``loss_init``, ``loss_final`` (``nan`` where the output is non-finite),
        ``diverged``, ``steps_done``, ``gain`` (:func:`init_gain`, ``nan`` if not measured),
        ``seconds``.
    """
    t0 = time.perf_counter()
    gain = init_gain(model, x[:256], spec.seed) if measure_gain else math.nan
    _, loss_init = _accuracy_and_loss(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    n = x.shape[0]
    diverged, done = False, 0
    model.train()
    for _ in range(spec.steps):
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not bool(torch.isfinite(loss)):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    acc, loss_final = _accuracy_and_loss(model, x, y)
    diverged = diverged or math.isnan(acc)
    return {"accuracy": acc, "loss_init": loss_init, "loss_final": loss_final, "diverged": diverged,
            "steps_done": done, "gain": gain, "seconds": time.perf_counter() - t0}
