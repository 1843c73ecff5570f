"""Leave the model exactly as it was (internal): modes, buffers, grads, requires_grad, RNG."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class ModelState:
    """Snapshot of what a forward/backward can change, restored by :meth:`restore`.

    Parameters are not copied (that would double the memory of a large model): the probe
    never writes them, and their autograd version counters prove it. A forward pass that
    modifies a parameter in place is reported by :meth:`restore` rather than silently undone.
    """

    def __init__(self, model: nn.Module):
        mods = list(model.modules())
        self.training = [(m, m.training) for m in mods]
        self.buffers = []
        self.buffer_names = []
        for m in mods:
            self.buffer_names.append((m, set(m._buffers)))
            for name, buf in m._buffers.items():
                if buf is not None:
                    self.buffers.append((m, name, buf, buf.detach().clone()))
        self.params = [(p, p._version, p.requires_grad, p.grad) for p in model.parameters()]
        self.names = {id(p): n for n, p in model.named_parameters()}

    def restore(self) -> list[str]:
        """Put everything back; return the names of parameters the forward modified in place."""
        for m, t in self.training:
            m.training = t
        with torch.no_grad():
            for m, names in self.buffer_names:
                for extra in set(m._buffers) - names:
                    del m._buffers[extra]
            for m, name, buf, saved in self.buffers:
                if m._buffers.get(name) is not buf:
                    m._buffers[name] = buf
                if not torch.equal(buf, saved):
                    buf.copy_(saved)
        changed = []
        for p, version, req, grad in self.params:
            if p.requires_grad != req:
                p.requires_grad_(req)
            if p.grad is not grad:
                p.grad = grad
            if p._version != version:
                changed.append(self.names.get(id(p), "?"))
        return changed


@contextlib.contextmanager
def forked_rng(seed: int, devices: list[int]):
    """Run with ``torch.manual_seed(seed)``; the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=devices, enabled=True):
        torch.manual_seed(seed)
        yield


def cuda_devices() -> list[int]:
    """CUDA devices whose RNG must be forked (all of them, since manual_seed seeds all)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def set_mode(model: nn.Module, mode: str) -> None:
    """``"train"``: ``model.train()``; ``"eval"``: ``model.eval()``; ``"as_is"``: nothing."""
    if mode == "train":
        model.train()
    elif mode == "eval":
        model.eval()
