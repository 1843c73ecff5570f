"""The batch the probe is given (internal): its accepted shapes, its checks, its labels.

``inputs`` is a tensor (``model(x)``), a tuple/list (``model(*inputs)``) or a mapping of
keyword tensors (``model(**inputs)``); here it becomes ``(args, kwargs)``, on the model's
device, usable by autograd and checked for NaN/+Inf, and each tensor gets the label the
messages use (``input[0]``, ``inputs['mask']``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import NonFiniteError, ParameterError
from ._options import OWNER


def describe(x: Any) -> str:
    """A short structural description: ``Tensor(32, 784) float32``, ``(Tensor(...), int)``."""
    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in x) + ")"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def input_labels(args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """``(label, value)`` of every positional and keyword input, in call order."""
    return [(f"input[{i}]", a) for i, a in enumerate(args)] + [(f"inputs[{k!r}]", v) for k, v in kwargs.items()]


def short(text: str, n: int = 600) -> str:
    """``text`` stripped and cut to ``n`` characters (``" ..."`` marks a cut)."""
    text = str(text).strip()
    return text if len(text) <= n else text[:n] + " ..."


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """The first dimension of the first input tensor with one, else None."""
    for _, v in input_labels(args, kwargs):
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return None


def split_inputs(inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of ``inputs``; ParameterError when it is no accepted shape or holds
    no tensor."""
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (list, tuple)):
        args, kwargs = tuple(inputs), {}
    else:
        raise ParameterError("inputs", OWNER, "a tensor, a tuple/list of tensors or a dict of "
                             "keyword tensors", type(inputs).__name__,
                             "pass e.g. probe(model, torch.randn(32, 784)).")
    if not any(isinstance(v, torch.Tensor) for _, v in input_labels(args, kwargs)):
        raise ParameterError("inputs", OWNER, "a structure containing at least one tensor",
                             describe(inputs), "pass the batch the model is called with.")
    return args, kwargs


def prepare_inputs(args: tuple, kwargs: dict, params: list, notes: list[str]) -> tuple[tuple, dict]:
    """The inputs on the model's device (when all its parameters share one) and usable by
    autograd; NonFiniteError on NaN/+Inf. What was done is appended to ``notes``."""
    device = params[0].device
    moved = False

    def to_dev(v):
        nonlocal moved
        if isinstance(v, torch.Tensor) and v.device != device and len({p.device for p in params}) == 1:
            moved = True
            return v.to(device)
        return v

    def usable(v):  # tensors made under torch.inference_mode() cannot enter autograd
        return v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v

    with torch.inference_mode(False):
        args = tuple(usable(to_dev(a)) for a in args)
        kwargs = {k: usable(to_dev(v)) for k, v in kwargs.items()}
    if moved:
        notes.append(f"inputs were moved to the model's device ({device}).")
    for label, v in input_labels(args, kwargs):
        if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.is_complex()):
            continue
        # -inf is how additive attention masks say "never attend" (nn.Transformer's causal
        # mask); NaN and +inf have no such use
        bad = int(torch.isnan(v).sum()) + int((v == float("inf")).sum())
        if bad:
            raise NonFiniteError(f"{label} ({describe(v)}) contains {bad} NaN/+Inf value(s); the probe "
                                 "needs a finite batch. Fix: clean or replace the batch.")
        neg = int((v == float("-inf")).sum())
        if neg:
            notes.append(f"{label} holds {neg} -inf value(s), taken as an additive mask.")
    return args, kwargs


def make_leaves(args: tuple, kwargs: dict, req: bool = True) -> tuple[tuple, dict, list]:
    """The inputs with every floating-point tensor replaced by a detached leaf that requires
    grad (``req=False``: unchanged), and ``[(label, leaf), ...]``."""
    leaves = []

    def f(v, label):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and req:
            leaf = v.detach().requires_grad_(True)
            leaves.append((label, leaf))
            return leaf
        return v
    a2 = tuple(f(v, f"input[{i}]") for i, v in enumerate(args))
    kw2 = {k: f(v, f"inputs[{k!r}]") for k, v in kwargs.items()}
    return a2, kw2, leaves
