"""Putting the model back after an extra forward of gradhealth's own (the forensic replay, the
shadow forward of a compiled model): the RNG states, the buffers and the train/eval modes are
what they were, and a buffer is written back only when it changed, so nothing else sees a new
version of it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["changed", "preserved"]


def changed(t: torch.Tensor, version: int, saved: torch.Tensor) -> bool:
    """Whether ``t`` differs from ``saved``, its copy taken at ``version``: a new version, or
    other values (NaN equal to NaN). The values are compared too because some in-place
    updates do not bump the version: BatchNorm's running statistics on CPU (torch 2.13)."""
    if t._version != version:
        return True
    if t.shape != saved.shape:
        return False   # replaced wholesale (not in place): nothing to put back into it
    with torch.no_grad():
        same = t == saved
        if t.is_floating_point() or t.is_complex():
            same |= t.isnan() & saved.isnan()
        return not bool(same.all())


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Around an extra forward (and backward): afterwards the RNG states, every buffer and every
    module's train/eval mode are what they were before, whatever ran or raised inside."""
    rng = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    bufs = [(b, b._version, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        with torch.no_grad():
            for b, v, saved in bufs:
                if b.shape == saved.shape and changed(b, v, saved):
                    b.copy_(saved)
        for m, mode in modes:
            m.training = mode
