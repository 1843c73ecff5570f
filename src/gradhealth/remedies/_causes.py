"""Remedies for the cause a forensic replay found behind a non-finite step (internal; used by
:func:`gradhealth.remedies.prescribe` for ``nonfinite`` and ``guard``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._text import quoted

__all__ = ["cause_remedies"]


def _replay_cause(ev: Mapping) -> tuple[str | None, str | None]:
    """(cause, module) of the forensic replay behind a non-finite event, when it found one:
    ``origin_cause``/``origin_module`` (the detector's event) or ``replay`` (the guard's)."""
    rep = ev.get("replay")
    if isinstance(rep, Mapping) and isinstance(rep.get("cause"), str):
        mod = rep.get("module")
        return rep["cause"], mod if isinstance(mod, str) else None
    cause, mod = ev.get("origin_cause"), ev.get("origin_module")
    return (cause if isinstance(cause, str) else None), (mod if isinstance(mod, str) else None)


def cause_remedies(b: Any, ev: Mapping) -> bool:
    """The remedy for the cause the replay found, first; True when clipping cannot help (the
    NaN is made in the forward or by the loss itself, not by a large gradient)."""
    cause, mod = _replay_cause(ev)
    inside = f" in {quoted(mod)}" if mod else " in the model's forward()"
    where = f"the forward of {quoted(mod)}" if mod else "the model's own forward()"
    if cause == "nonfinite_input":
        b.add("check the data pipeline",
              "# the batch itself holds NaN/Inf: check the data pipeline, e.g. "
              "assert torch.isfinite(x).all() before model(x)",
              "the replay found non-finite values in the batch before any layer ran; the model "
              "is not to blame, and clipping the gradient cannot remove them")
        return True
    if cause == "loss_gradient":
        b.add("make the loss numerically stable",
              "# the loss's own gradient is NaN/Inf: use F.cross_entropy / F.log_softmax + nll_loss, "
              "BCEWithLogitsLoss, or add an eps inside sqrt/log/division in the loss",
              "the replay found the model's output finite and the gradient of the loss w.r.t. it "
              "non-finite: the loss function makes the NaN, so clipping the gradient cannot remove it")
        return True
    if cause == "functional_code":
        b.add("guard the domain of the functional operation",
              f"# a functional op (not a module){inside} makes NaN/Inf: e.g. "
              "torch.sqrt(x.clamp_min(1e-12)), torch.log(x.clamp_min(1e-12)), x / (y + 1e-8)",
              "the replay traced the first non-finite value to code that is not a module; "
              "clipping acts after the backward and cannot fix the operation itself")
        return True
    if cause == "nonfinite_params":
        b.add("roll back to the last good parameters",
              'gradhealth.watch(model, optimizer, on_nonfinite="rollback")',
              "the parameters were already non-finite before the step: only restoring them "
              "(or a checkpoint) recovers the run")
    elif cause == "not_reproduced":
        b.add("re-run the step: the fault did not reproduce",
              "# transient or not replayable: the re-run was finite or could not run. Suspect a "
              "non-deterministic kernel, a race, the hardware, or in-place gradient edits; "
              "torch.use_deterministic_algorithms(True) narrows it down",
              "the replay did not reproduce the fault: the re-run step was finite, or its backward "
              "could not be replayed (no output gradient kept)")
    elif cause == "op_output":
        b.add("keep the module's forward in range",
              f"# {where} overflows on finite inputs: lower the learning rate, "
              "normalise its input, or compute it in float32",
              "the replay found finite inputs and parameters and a non-finite output")
        return True
    return False
