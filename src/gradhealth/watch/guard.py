"""The watcher's ``on_nonfinite`` policies: raise, warn, skip, rollback.

``"skip"``, ``"rollback"`` and ``"raise"`` act through one mechanism,
:class:`gradhealth.remedies.StepGuard` (the optax ``apply_if_finite`` of gradhealth): it checks
the gradients before every optimizer step (one device-to-host sync per step) and does not run
the optimizer at all on a non-finite step, so parameters and optimizer state stay bitwise
unchanged. The watcher turns each of its callbacks into an action and an Event:

* ``skip``: the step is skipped; after ``max_consecutive_skips`` skips in a row the next
  non-finite step raises :class:`~gradhealth.errors.NonFiniteError`.
* ``rollback``: the step is skipped, the last known-good parameters and optimizer state are
  restored (a snapshot taken every ``rollback_every`` good steps, in memory or in the run
  directory), and the learning rate is multiplied by ``rollback_lr_factor``.
* ``raise``: the first non-finite step raises :class:`~gradhealth.errors.NonFiniteError`
  carrying the replay's diagnosis (the step is not applied).
* ``warn``: no guard; the step is applied. The watcher warns (with the diagnosis) when its
  statistics show non-finite gradients, i.e. on logged steps only, with no extra sync.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["POLICIES", "Snapshot", "take_snapshot", "restore_snapshot", "scale_lr"]

POLICIES = ("warn", "skip", "rollback", "raise")


class Snapshot:
    """Parameters and optimizer states at one step (the rollback target)."""

    def __init__(self, step: int, params: list[torch.Tensor] | None, opt_states: list[dict] | None,
                 path: Path | None = None):
        self.step = step
        self.params = params
        self.opt_states = opt_states
        self.path = path

    def load(self) -> tuple[list[torch.Tensor], list[dict]]:
        if self.path is not None:
            data = torch.load(self.path, map_location="cpu", weights_only=False)
            return data["params"], data["opt_states"]
        return self.params, self.opt_states  # type: ignore[return-value]


def take_snapshot(step: int, params: list[torch.Tensor], optimizers: list[Any],
                  directory: Path | None = None) -> Snapshot:
    """Copy ``params`` and every optimizer's ``state_dict`` (tensors cloned).

    With ``directory``, the copy is written to ``directory/rollback.pt`` (atomically: a
    temporary file renamed over the old one) and nothing stays in memory.
    """
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
    states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    if directory is None:
        return Snapshot(step, saved, states)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rollback.pt"
    tmp = directory / "rollback.pt.tmp"
    torch.save({"step": step, "params": [s.cpu() for s in saved], "opt_states": states}, tmp)
    os.replace(tmp, path)
    return Snapshot(step, None, None, path)


def restore_snapshot(snap: Snapshot, params: list[torch.Tensor], optimizers: list[Any]) -> None:
    """Copy the snapshot back into ``params`` and the optimizers (keeping each group's
    current learning rate: a scheduler may have moved it since the snapshot)."""
    saved, states = snap.load()
    with torch.no_grad():
        for p, s in zip(params, saved):
            if p.shape == s.shape:
                p.copy_(s.to(device=p.device, dtype=p.dtype))
    for opt, st in zip(optimizers, states):
        lrs = [g.get("lr") for g in opt.param_groups]
        opt.load_state_dict(st)
        for g, lr in zip(opt.param_groups, lrs):
            if lr is not None:
                g["lr"] = lr


def scale_lr(optimizers: list[Any], factor: float) -> list[tuple[float, float]]:
    """Multiply every group's learning rate by ``factor``; returns ``(before, after)`` pairs."""
    out = []
    for opt in optimizers:
        for g in opt.param_groups:
            lr = g.get("lr")
            if lr is None:
                continue
            before = float(lr)
            if isinstance(lr, torch.Tensor):
                lr.mul_(factor)
                after = float(lr)
            else:
                after = before * factor
                g["lr"] = after
            out.append((before, after))
    return out
