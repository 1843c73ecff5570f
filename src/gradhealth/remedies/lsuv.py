"""Layer-sequential unit-variance initialisation (LSUV; Mishkin & Matas 2016).

Unlike the formula-based initialisers of :mod:`gradhealth.remedies.init`, :func:`lsuv_`
measures: it runs one batch and rescales each layer, in forward order, until its output has
unit variance on that batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_int, check_real
from ..errors import GradHealthError, ParameterError
from ._plan import _plan, _Target
from ._summary import InitSummary, LayerInit, _biases, _std

__all__ = ["lsuv_"]


class _Stop(Exception):
    """Raised from a forward hook to end a forward pass early (internal)."""


def _call(model: nn.Module, inputs: Any):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, Mapping):
        for v in x.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def lsuv_(model: nn.Module, inputs: Any, *, tol: float = 0.1, max_iter: int = 10, init: str = "orthogonal",
          layers: str | Sequence[str] | None = None) -> InitSummary:
    """Layer-sequential unit-variance initialisation (LSUV; Mishkin & Matas 2016, "All you
    need is a good init").

    1. Pre-initialise every Linear/Conv weight orthogonally (``init="orthogonal"``; or keep
       the current weights with ``init="none"``) and zero the biases.
    2. Layer by layer, in forward order: run the batch, measure the variance ``v`` of the
       layer's output, and divide its weight by ``sqrt(v)``; repeat until
       ``|v - 1| < tol`` or ``max_iter`` passes.

    Unlike the formula-based schemes this measures the actual data and architecture, so it
    also corrects for non-Gaussian inputs, normalisation-free residual paths and activations
    without a known gain. Recurrent layers are not rescaled (reported in ``unmatched``).
    The model's train/eval mode is restored afterwards; the passes run in eval mode
    without gradients.

    Args:
        model: the model.
        inputs: one batch: a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        tol: tolerance on the output variance (> 0).
        max_iter: rescaling passes per layer (>= 1).
        init: ``"orthogonal"`` or ``"none"``.
        layers: glob pattern(s) of module names (default: all Linear/Conv layers).

    Returns:
        :class:`InitSummary` (``scheme`` gives the measured variance and passes per layer).

    Raises:
        ParameterError: no batch (``inputs=None``), a batch the model's forward does not accept
            (checked before anything is re-initialised), or the batch gives non-finite outputs (bad inputs or an already
            diverged model), or bad arguments.
    """
    owner = "lsuv_"
    tol = check_real(tol, "tol", owner, low=0.0, low_inclusive=False, fix="pass e.g. tol=0.1.")
    max_iter = check_int(max_iter, "max_iter", owner, min_value=1)
    check_choice(init, "init", owner, ["orthogonal", "none"],
                 fix="pass init='orthogonal' (the paper's pre-initialisation) or 'none' (keep the weights).")
    if inputs is None:
        raise ParameterError("inputs", owner, "one batch: a tensor, a tuple (model(*inputs)) or a dict "
                             "(model(**inputs))", None, "pass a batch of training data, e.g. "
                             "lsuv_(model, x_train[:256]).")
    targets, unmatched = _plan(model, owner, layers=layers, needs_activation=False)
    unmatched = list(unmatched)
    rnn = [t for t in targets if isinstance(t.module, nn.RNNBase)]
    unmatched += [(t.name, "lsuv_ does not rescale recurrent layers; use orthogonal_ on them") for t in rnn]
    targets = [t for t in targets if not isinstance(t.module, nn.RNNBase)]
    if not targets:
        raise ParameterError("model", owner, "a module containing Linear or Conv layers", type(model).__name__,
                             "use orthogonal_(model, gain=1.0) for recurrent-only models.")
    was_training = {m: m.training for m in model.modules()}
    summary = InitSummary(owner, unmatched=unmatched)
    try:
        model.eval()
        with torch.no_grad():
            _check_batch(model, inputs, owner)  # before anything is re-initialised
            if init == "orthogonal":
                _pre_initialise(targets)
            order = _forward_order(model, inputs, targets, owner)
            named = {t.name: t for t in targets}
            unused = [t.name for t in targets if t.name not in order]
            summary.unmatched += [(n, "not called by the forward pass on this batch") for n in unused]
            for name in order:
                t = named[name]
                before = _std(t.module.weight)
                var, passes = _rescale(model, inputs, t, tol, max_iter)
                if var == 0.0:
                    summary.unmatched.append((name, "output variance is 0 on this batch (dead layer); "
                                                    "left as pre-initialised"))
                    continue
                summary.changed.append(LayerInit(
                    name, type(t.module).__name__, "", "measured on the batch",
                    f"{'orthogonal, ' if init == 'orthogonal' else ''}output var {var:.3g} after {passes} pass(es)",
                    ["weight"] + [n for n, _ in _biases(t.module)] * (init == "orthogonal"),
                    before, _std(t.module.weight)))
    finally:
        for m, mode in was_training.items():
            m.train(mode)
    return summary


def _describe(inputs: Any) -> str:
    """What the batch is, for a message: ``"a tensor of shape (3, 5)"``, ``"a tuple of 2"``."""
    if isinstance(inputs, torch.Tensor):
        return f"a tensor of shape {tuple(inputs.shape)}"
    if isinstance(inputs, (tuple, list, Mapping)):
        return f"a {type(inputs).__name__} of {len(inputs)}"
    return f"a {type(inputs).__name__}"


def _check_batch(model: nn.Module, inputs: Any, owner: str) -> None:
    """One forward pass; a ParameterError naming ``inputs`` when the model does not accept the
    batch (wrong shape, dtype or type), instead of the forward's own TypeError/RuntimeError.
    The random number generators are restored afterwards: a forward that draws (functional
    dropout) gives the same LSUV as without this check."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda):
            _call(model, inputs)
    except GradHealthError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ParameterError("inputs", owner, "a batch the model's forward accepts", _describe(inputs),
                             f"model(inputs) raised {type(exc).__name__}: {first}. Pass a batch shaped "
                             "like the training data.") from exc


def _pre_initialise(targets: list[_Target]) -> None:
    """The paper's start: orthogonal weights, zero biases."""
    for t in targets:
        w = t.module.weight
        if w.dim() >= 2:
            nn.init.orthogonal_(w)
        for _, b in _biases(t.module):
            b.zero_()


def _forward_order(model: nn.Module, inputs: Any, targets: list[_Target], owner: str) -> list[str]:
    """Names of the targets in the order the forward pass calls them (it may differ from the
    module order); raises if the batch gives non-finite outputs."""
    order: list[str] = []
    by_module = {t.module: t.name for t in targets}

    def record(m, i, o):
        if by_module[m] not in order:
            order.append(by_module[m])

    hooks = [t.module.register_forward_hook(record) for t in targets]
    try:
        out = _call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    first = _first_tensor(out)
    if first is not None and first.is_floating_point() and not bool(torch.isfinite(first).all()):
        raise ParameterError("inputs", owner, "a batch on which the model's outputs are finite",
                             "a batch giving NaN/Inf outputs",
                             "check the batch for NaN/Inf (torch.isfinite(x).all()), or reset a "
                             "diverged model before LSUV.")
    return order


def _rescale(model: nn.Module, inputs: Any, t: _Target, tol: float, max_iter: int) -> tuple[float, int]:
    """Divide ``t``'s weight by the square root of its output variance until it is within
    ``tol`` of 1 (or 0: a dead layer); ``(last variance, passes)``. Each pass stops the
    forward at the layer, so later layers cost nothing."""
    captured: list[torch.Tensor] = []

    def hook(m, i, o):
        captured.append(_first_tensor(o))
        raise _Stop

    h = t.module.register_forward_hook(hook)
    var = float("nan")
    passes = 0
    try:
        for passes in range(1, max_iter + 1):  # noqa: B007 - read after the loop (passes made)
            captured.clear()
            try:
                _call(model, inputs)
            except _Stop:
                pass
            o = captured[0].float()
            var = float(o.var())
            if not math.isfinite(var):
                raise ParameterError(
                    "inputs", "lsuv_", "a batch on which every layer's output is finite",
                    f"non-finite output variance at layer {t.name!r}",
                    "check the batch for NaN/Inf, or lower the initial weight scale.")
            if var == 0.0 or abs(var - 1.0) < tol:
                break
            t.module.weight.div_(math.sqrt(var))
    finally:
        h.remove()
    return var, passes

