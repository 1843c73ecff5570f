"""The forward pass, the loss and the recurrent replay of one probe (internal).

Each function here is one step of ``core._measure``: run the model under the recorder (and
say where it failed), check its floating-point outputs, build and check the loss, and replay
every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call step by step for its per-step gradients. The
error messages name the module and the fix; nothing is read back to the host except on an
error path and the loss value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_choice
from ..errors import ModelError, NonFiniteError, ParameterError
from ..stats import nonfinite_counts
from . import _analysis as A
from ._capture import RNN_TYPES, Recorder, iter_floats
from ._inputs import describe, input_labels, short
from ._options import OWNER, Batch
from .recurrent import ReplayError, replay, spectral_radius


def _g(x):
    return A._fmt(x)


def forward(model, args, kwargs, rec: Recorder):
    """``model(*args, **kwargs)`` under the recorder; ModelError (where it failed) on any error."""
    rec.install()
    try:
        with torch.enable_grad(), rec:
            return model(*args, **kwargs)
    except Exception as exc:  # the model's own error, shown with where it happened
        where = rec.stack[-1] if rec.stack else None
        raise forward_error(model, args, kwargs, exc, where, rec.names) from exc


def forward_error(model, args, kwargs, exc, where, names) -> ModelError:
    given = "; ".join(f"{label}: {describe(v)}" for label, v in input_labels(args, kwargs))
    msg = [f"The model's forward pass failed on the given inputs: {type(exc).__name__}: {short(exc)}",
           f"Inputs given: {given}."]
    if where is not None:
        mod, margs, mkw = where
        received = describe(tuple(margs)) + (f" {describe(mkw)}" if mkw else "")
        msg.append(f"It failed in module {names.get(mod, type(mod).__name__)!r} ({short(repr(mod), 200)}), "
                   f"which received {received}.")
        first_t = next((v for v in list(margs) if isinstance(v, torch.Tensor)), None)
        for label, v in input_labels(args, kwargs):
            if first_t is not None and v is first_t:
                msg.append(f"That is {label} as given, unchanged: check its shape against this module.")
                break
    msg.append("Fix: pass inputs of the shape and dtype the model expects "
               "(the CLI takes --input-shape N,D,... or --inputs FILE.pt).")
    return ModelError("\n".join(msg))


def locate_nonfinite(rec: Recorder) -> tuple[str | None, int]:
    if not rec.completed:
        return None, 0
    counts = nonfinite_counts([t for _, t in rec.completed]).tolist()
    for (name, _), c in zip(rec.completed, counts):
        if c:
            return name, int(c)
    return None, 0


def make_loss(output, outs, target, loss_fn, gen, device):
    """The loss tensor and its description."""
    o0 = outs[0]
    if loss_fn is None or (isinstance(loss_fn, str) and loss_fn == "surrogate"):
        batch = o0.shape[0] if o0.ndim >= 1 and o0.shape[0] > 0 else 1
        total = None
        for o in outs:
            r = torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype)
            term = (r * o).sum()
            total = term if total is None else total + term
        return total / batch, {"kind": "surrogate",
                               "description": "L = sum(r * y) / batch with fixed r ~ N(0, 1) "
                                              "(a random projection of the outputs)"}
    if isinstance(loss_fn, str):
        check_choice(loss_fn, "loss_fn", OWNER, ("surrogate", "mse", "ce"))
        if loss_fn == "mse":
            tgt = target if target is not None else torch.randn(o0.shape, generator=gen, device=device,
                                                               dtype=o0.dtype)
            if isinstance(tgt, torch.Tensor):
                tgt = tgt.to(o0.device)
            try:
                return F.mse_loss(o0, tgt), {"kind": "mse", "description": "mean squared error" + (
                    " against a seeded random target" if target is None else "")}
            except Exception as exc:
                raise ModelError(f"loss 'mse' failed on output {describe(o0)} and target "
                                 f"{describe(tgt)}: {short(exc)}\nFix: pass a target of the "
                                 "output's shape.") from exc
        if o0.ndim < 2:
            raise ModelError(f"loss 'ce' needs an output of shape (batch, classes, ...); the model's "
                             f"output is {describe(o0)}.\nFix: use loss_fn='mse' or 'surrogate'.")
        if target is None:
            shape = (o0.shape[0],) + tuple(o0.shape[2:])
            tgt = torch.randint(0, o0.shape[1], shape, generator=gen, device=device)
        else:
            tgt = target.to(o0.device) if isinstance(target, torch.Tensor) else target
        try:
            return F.cross_entropy(o0, tgt), {"kind": "ce", "description": "cross-entropy" + (
                " against seeded random labels" if target is None else "")}
        except Exception as exc:
            raise ModelError(f"loss 'ce' failed on output {describe(o0)} and target "
                             f"{describe(tgt)}: {short(exc)}\nFix: pass integer class labels of "
                             "shape (batch, ...).") from exc
    if not callable(loss_fn):
        raise ParameterError("loss_fn", OWNER, "a callable loss_fn(output, target), 'mse', 'ce', "
                             "'surrogate' or None", loss_fn, "leave it out to use the surrogate loss.")
    try:
        loss = loss_fn(output, target)
    except Exception as exc:
        raise ModelError(f"loss_fn raised {type(exc).__name__}: {short(exc)}\nIt was called as "
                         f"loss_fn(output, target) with output {describe(output)} and target "
                         f"{describe(target)}.") from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ModelError(f"loss_fn must return a scalar tensor; it returned {describe(loss)}.\n"
                         "Fix: reduce the loss, e.g. return loss.mean().")
    return loss.reshape(()), {"kind": "user", "description": getattr(loss_fn, "__name__", "loss_fn")}


def checked_outputs(output, rec: Recorder) -> tuple[list, list]:
    """The output's floating-point tensors and those that require grad; ModelError when there
    is none of either, NonFiniteError (naming the first non-finite module) when one is not finite."""
    outs = list(iter_floats(output))
    if not outs:
        raise ModelError(f"The model's output has no floating-point tensor (it returned "
                         f"{describe(output)}); the probe differentiates a floating-point output.\n"
                         "Fix: return logits/activations, not argmax/ids.")
    counts = nonfinite_counts(outs).tolist()
    if any(counts):
        where, c = locate_nonfinite(rec)
        growth = forward_growth(rec)
        raise NonFiniteError(
            f"The forward pass itself is non-finite: the model's output has {sum(counts)} NaN/Inf "
            f"value(s), first produced by module {where!r} ({c} non-finite entries in its output)."
            + (f" {growth}" if growth else "")
            + "\nFix: the activations overflow or a module computes NaN before any gradient exists; "
              "check the initialisation scale (gradhealth.remedies) and the module named above.",
            diagnosis={"where": "forward", "first_module": where, "count": c})
    outs_g = [o for o in outs if o.requires_grad]
    if not outs_g:
        raise ModelError("The model's output does not require grad: no parameter or input "
                         "influences it through autograd (is the forward wrapped in torch.no_grad(), "
                         "or are all parameters frozen and the inputs integers?).\n"
                         "Fix: call the probe outside torch.no_grad() on a model with parameters "
                         "that require grad.")
    return outs, outs_g


def checked_loss(output, outs: list, batch: Batch, gen: torch.Generator, device) -> tuple[torch.Tensor, dict]:
    """The loss (see :func:`make_loss`) and its description with its value; ModelError when it
    does not require grad, NonFiniteError when it is not finite (the output being finite)."""
    loss, loss_info = make_loss(output, outs, batch.target, batch.loss_fn, gen, device)
    if not loss.requires_grad:
        raise ModelError("The loss does not depend on any parameter (it does not require grad).\n"
                         "Fix: compute the loss from the model's output.")
    loss_val = float(loss.detach())
    if not math.isfinite(loss_val):
        raise NonFiniteError(f"The loss is {loss_val} although the model's output is finite; the "
                             f"problem is in the loss, not in the gradients ({loss_info['description']}).\n"
                             "Fix: check loss_fn and the target (e.g. log of 0, labels out of range).",
                             diagnosis={"where": "loss"})
    loss_info["value"] = loss_val
    return loss, loss_info


def forward_growth(rec: Recorder) -> str:
    """Forward RMS of the layer outputs before the first non-finite one (host reads: error path)."""
    rows = []
    for s in rec.slots:
        for c in s.calls:
            if c.out_sq is None or not c.numel:
                continue
            rms = math.sqrt(float(c.out_sq) / c.numel)
            rows.append((s.name, rms))
    finite = [(n, r) for n, r in rows if math.isfinite(r) and r > 0]
    if len(finite) < 3:
        return ""
    g = (finite[-1][1] / finite[0][1]) ** (1.0 / (len(finite) - 1))
    return (f"Before that, the forward RMS went from {_g(finite[0][1])} at {finite[0][0]!r} to "
            f"{_g(finite[-1][1])} at {finite[-1][0]!r} (x{_g(g)} per layer over {len(finite)} layers).")


def replay_series(slot, call, n_probes, notes) -> list[dict]:
    """Per-step squared gradient norms (device tensors) of one call of an nn.RNN/LSTM/GRU."""
    real = call.outs
    if not real:
        raise ReplayError("no floating-point output")
    with torch.enable_grad():
        outs, hidden, check = replay(slot.module, call.args, call.kwargs, real)
    if check > 1e-3:
        notes.append(f"{slot.name}: the step-by-step replay differs from the module's own output by "
                     f"{check:.1e} (relative); per-step gradients are those of the replay.")
    keys = sorted(hidden)
    flat = [h for k in keys for h in hidden[k]]
    sq: list = [None] * len(flat)
    for j in range(n_probes):
        gdict = call.out_grads.get(f"p{j}", {})
        pairs = [(o, gdict[i]) for i, o in enumerate(outs) if gdict.get(i) is not None]
        if not pairs:
            continue
        gs = torch.autograd.grad([o for o, _ in pairs], flat, [g for _, g in pairs],
                                 retain_graph=True, allow_unused=True)
        for k, g in enumerate(gs):
            if g is not None:
                x = torch.linalg.vector_norm(g.detach(), dtype=torch.float64).square() / n_probes
                sq[k] = x if sq[k] is None else sq[k] + x
    rho = spectral_radius(slot.module)
    multi = slot.module.num_layers > 1 or slot.module.bidirectional
    out, pos = [], 0
    for layer, d in keys:
        T = len(hidden[(layer, d)])
        label = slot.name + (f" (layer {layer}{', reverse' if d == 1 else ''})" if multi else "")
        out.append({"label": label, "sq": sq[pos:pos + T], "rho": rho if layer == 0 else None,
                    "slot": slot.index, "reverse": d == 1})
        pos += T
    return out


def recurrent_series(slots, n_probes: int, notes: list[str]) -> list[dict]:
    """Per-step gradient series (device tensors) of every call of every recurrent layer; a call
    that cannot be replayed gets a note instead."""
    series = []
    for s in slots:
        if isinstance(s.module, RNN_TYPES):
            for c in s.calls:
                try:
                    series.extend(replay_series(s, c, n_probes, notes))
                except (ReplayError, RuntimeError) as exc:
                    notes.append(f"{s.name}: time-step gradients not measured ({short(exc, 200)}).")
    return series
