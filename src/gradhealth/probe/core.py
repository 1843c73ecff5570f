"""``probe(model, inputs)``: one batch in, per-layer table + verdicts + prescriptions out.

What one call does (all on the model's device, statistics read back once at the end):

1. one forward pass in training mode (by default), recording every parameter-owning module's
   output, the activation applied after it and every residual addition (see ``_capture``);
2. one backward pass of the loss for ``dL/dtheta`` and ``dL/d(layer output)``;
3. ``n_probes`` backward passes of Gaussian cotangents ``w ~ N(0, I)`` at the model output,
   giving each layer's *backward gain* ``||J_l^T w|| / ||w||`` and its gradient scale coefficient;
4. a step-by-step replay of ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (time is depth);
5. Lanczos on the input-output Jacobian of a sub-batch (double-backward products);
6. verdicts, evidence and prescriptions; the model is restored exactly.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_choice, check_int
from ..errors import ModelError, NonFiniteError, ParameterError
from ..stats import nonfinite_counts, segment_norms, tensor_norms
from . import _analysis as A
from ._assemble import Context, assemble
from ._capture import RNN_TYPES, Recorder, iter_floats
from ._state import ModelState, cuda_devices, forked_rng
from .jacobian import spectrum_from_graph
from .recurrent import ReplayError, replay, spectral_radius
from .result import JacobianSpectrum, ProbeResult

__all__ = ["probe"]

_OWNER = "probe"
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_RMSNORM = getattr(nn, "RMSNorm", None)
if _RMSNORM is not None:
    _NORM_TYPES = _NORM_TYPES + (_RMSNORM,)


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def read_back(tree):
    """``tree`` (nested dicts/lists of 0-dim tensors, numbers, None) with every tensor replaced by
    a float: one device-to-host transfer per device, the only synchronisation of the probe."""
    flat: list[torch.Tensor] = []

    def collect(x):
        if isinstance(x, torch.Tensor):
            flat.append(x.detach().reshape(()).to(torch.float64))
        elif isinstance(x, dict):
            for y in x.values():
                collect(y)
        elif isinstance(x, (list, tuple)):
            for y in x:
                collect(y)

    collect(tree)
    values = [math.nan] * len(flat)
    by_dev: dict = {}
    for i, t in enumerate(flat):
        by_dev.setdefault(t.device, []).append(i)
    for idx in by_dev.values():
        for i, v in zip(idx, torch.stack([flat[i] for i in idx]).cpu().tolist()):
            values[i] = v
    it = iter(values)

    def rebuild(x):
        if isinstance(x, torch.Tensor):
            return next(it)
        if isinstance(x, dict):
            return {k: rebuild(y) for k, y in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(rebuild(y) for y in x)
        return x

    return rebuild(tree)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in x) + ")"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def _input_labels(args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    return [(f"input[{i}]", a) for i, a in enumerate(args)] + [(f"inputs[{k!r}]", v) for k, v in kwargs.items()]


def _short(text: str, n: int = 600) -> str:
    text = str(text).strip()
    return text if len(text) <= n else text[:n] + " ..."


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for _, v in _input_labels(args, kwargs):
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return None


def _g(x):
    return A._fmt(x)


# ------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------
def probe(model: nn.Module, inputs: Any, target: Any = None,
          loss_fn: Callable | str | None = None, *, mode: str = "train",
          layers: str | Sequence[str] | None = None, seed: int = 0, n_probes: int = 2,
          jacobian: bool = True, jacobian_batch: int | None = 8, lanczos_steps: int = 16,
          top_k: int = 3, max_params: int | None = 200_000_000,
          thresholds: A.Thresholds | None = None) -> ProbeResult:
    """Diagnose the gradient health of ``model`` on one batch.

    Args:
        model: any ``torch.nn.Module`` with parameters.
        inputs: what the model is called with: a tensor (``model(x)``), a tuple/list
            (``model(*inputs)``) or a dict of keyword tensors (``model(**inputs)``, HF-style).
        target: the target for ``loss_fn`` (optional).
        loss_fn: ``loss_fn(output, target) -> scalar``; or ``"mse"`` / ``"ce"`` (with a seeded
            random target when ``target`` is None); or ``None`` / ``"surrogate"``: a fixed random
            projection of the outputs, ``L = sum(r * y) / batch`` with ``r ~ N(0, 1)`` (said
            in ``result.loss``). Gains and verdicts do not depend on the loss; the reported
            parameter-gradient norms do.
        mode: ``"train"`` (default: what training sees: batch statistics, dropout active),
            ``"eval"``, or ``"as_is"`` (each module's current mode). Restored afterwards.
        layers: glob pattern(s) on qualified module names (``"encoder.layers.*"``) to analyse
            only some layers (the whole model still runs).
        seed: seeds dropout, the random cotangents, the surrogate loss and the Lanczos start
            vector. The global RNG state is restored afterwards.
        n_probes: number of Gaussian cotangents for the backward gains and GSC.
        jacobian: estimate the input-output Jacobian spectrum.
        jacobian_batch: number of examples (along dim 0 of the inputs) for the Jacobian;
            ``None``: the whole batch.
        lanczos_steps: Lanczos steps for the Jacobian (each about two backward passes).
        top_k: number of top singular values to report.
        max_params: refuse (with a cost estimate) models with more parameters than this;
            ``None`` disables the check.
        thresholds: verdict thresholds (:class:`Thresholds`).

    Returns:
        A frozen :class:`~gradhealth.probe.result.ProbeResult`.

    Raises:
        ParameterError: a parameter breaks its rule (the message says which and how to fix it).
        ModelError: the model has no parameters, its forward pass fails on ``inputs`` (the
            message shows the model's error and the module where it happened), its output has
            no floating-point tensor, or it is larger than ``max_params``.
        NonFiniteError: the inputs, the forward pass or the loss are already non-finite (the
            message names the first module whose output is non-finite).

    The model is left exactly as it was: parameters, buffers (BatchNorm running statistics),
    ``.grad``, ``requires_grad``, train/eval mode of every module and the RNG state.

    Estimators (no Jacobian is ever materialised; details in ``docs/probe.md``):
        Let ``J_l = dy/df_l`` be the Jacobian of the model output ``y`` (the whole batch) with
        respect to layer ``l``'s output ``f_l``. For Gaussian cotangents ``w ~ N(0, I)`` at the
        output, ``E||J_l^T w||^2 = ||J_l||_F^2``, and ``J_l^T w`` is one backward pass that
        yields it for every layer at once (tensor hooks). With ``n_probes`` such passes:

        * backward gain ``g_l = sqrt(mean ||J_l^T w||^2 / mean ||w||^2)``;
        * gradient scale coefficient (Philipp, Song & Carbonell 2018)
          ``GSC(out, l) = ||J_l||_qm ||f_l|| / ||y||`` with ``||J_l||_qm^2 = ||J_l||_F^2 / n_l``
          (``n_l`` entries in ``f_l``), estimated as ``sqrt(mean ||J_l^T w||^2 / n_l) ||f_l|| / ||y||``;
        * per-layer growth ``g_l / g_{l+1}``; for plain fully connected stacks its square is
          compared with mean-field ``chi_1`` at ``sigma_w2 = fan_in mean(W^2)``,
          ``sigma_b2 = mean(b^2)``;
        * input-output Jacobian: Lanczos on ``J^T J`` (or ``J J^T``) with ``J^T u`` from a
          backward pass and ``J v`` from the double-backward trick (``J v = d<J^T u, v>/du``);
          RMS singular value by Hutchinson.
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ParameterError("model", _OWNER, "a torch.nn.Module", type(model).__name__,
                             "pass the model object itself (e.g. probe(net, x)).")
    compiled = isinstance(getattr(model, "_orig_mod", None), nn.Module)
    if compiled:  # torch.compile: the probe needs eager hooks, and the weights are the same
        model = model._orig_mod
    mode = check_choice(mode, "mode", _OWNER, ("train", "eval", "as_is"))
    seed = check_int(seed, "seed", _OWNER)
    n_probes = check_int(n_probes, "n_probes", _OWNER, min_value=1)
    lanczos_steps = check_int(lanczos_steps, "lanczos_steps", _OWNER, min_value=1)
    top_k = check_int(top_k, "top_k", _OWNER, min_value=1)
    if jacobian_batch is not None:
        jacobian_batch = check_int(jacobian_batch, "jacobian_batch", _OWNER, min_value=1,
                                   fix="pass jacobian_batch=8 (or None for the whole batch).")
    if max_params is not None:
        max_params = check_int(max_params, "max_params", _OWNER, min_value=1,
                               fix="pass max_params=None to disable the size check.")
    th = thresholds if thresholds is not None else A.DEFAULT_THRESHOLDS
    if not isinstance(th, A.Thresholds):
        raise ParameterError("thresholds", _OWNER, "a gradhealth.probe.Thresholds", type(th).__name__,
                             "pass Thresholds(ratio=..., ...) or leave it out.")

    params = list(model.parameters())
    if not params:
        raise ModelError(
            f"The model ({type(model).__name__}) has no parameters, so there is no gradient to "
            "probe. gradhealth measures gradients with respect to parameters: pass a model with "
            "at least one nn.Parameter (a module built from nn.Linear, nn.Conv2d, ...).")

    names: dict = {}
    for name, m in model.named_modules():
        names.setdefault(m, name or "(root)")
    owners = [m for m in names if next(m.parameters(recurse=False), None) is not None]
    selected = owners
    patterns = None
    if layers is not None:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ParameterError("layers", _OWNER, "a glob pattern or a list of glob patterns",
                                 layers, "pass e.g. layers='encoder.layers.*'.")
        selected = [m for m in owners if any(fnmatch.fnmatchcase(names[m], p) for p in patterns)]
        if not selected:
            listed = ", ".join(names[m] for m in owners[:12]) + (" ..." if len(owners) > 12 else "")
            raise ParameterError("layers", _OWNER, "a pattern matching at least one layer", layers,
                                 f"layers are named like: {listed}")

    n_params = sum(p.numel() for p in params)
    if max_params is not None and n_params > max_params and patterns is None:
        raise ModelError(_cost_message(model, params, n_params, max_params, n_probes, jacobian,
                                       lanczos_steps, jacobian_batch))

    # ---- inputs ---------------------------------------------------------------------------
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (list, tuple)):
        args, kwargs = tuple(inputs), {}
    else:
        raise ParameterError("inputs", _OWNER, "a tensor, a tuple/list of tensors or a dict of "
                             "keyword tensors", type(inputs).__name__,
                             "pass e.g. probe(model, torch.randn(32, 784)).")
    labelled = _input_labels(args, kwargs)
    if not any(isinstance(v, torch.Tensor) for _, v in labelled):
        raise ParameterError("inputs", _OWNER, "a structure containing at least one tensor",
                             _describe(inputs), "pass the batch the model is called with.")
    device = params[0].device
    notes: list[str] = []
    if compiled:
        notes.append("the torch.compile'd module was probed through its original (eager) module.")
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
    for label, v in _input_labels(args, kwargs):
        if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.is_complex()):
            continue
        # -inf is how additive attention masks say "never attend" (nn.Transformer's causal
        # mask); NaN and +inf have no such use
        bad = int(torch.isnan(v).sum()) + int((v == float("inf")).sum())
        if bad:
            raise NonFiniteError(f"{label} ({_describe(v)}) contains {bad} NaN/+Inf value(s); the probe "
                                 "needs a finite batch. Fix: clean or replace the batch.")
        neg = int((v == float("-inf")).sum())
        if neg:
            notes.append(f"{label} holds {neg} -inf value(s), taken as an additive mask.")

    state = ModelState(model)
    rec = Recorder(model, selected, names)
    try:
        if mode == "train":
            model.train()
        elif mode == "eval":
            model.eval()
        # a diagnostic is often called from evaluation code: gradients are needed here
        with torch.inference_mode(False), torch.enable_grad(), forked_rng(seed, cuda_devices()):
            result = _run(model, args, kwargs, target, loss_fn, rec, state, names, selected,
                          th=th, seed=seed, n_probes=n_probes, jacobian=jacobian,
                          jacobian_batch=jacobian_batch, lanczos_steps=lanczos_steps, top_k=top_k,
                          notes=notes, mode=mode, patterns=patterns, t_start=t_start,
                          n_params=n_params)
    finally:
        rec.remove()
        rec.release_graph()
        changed = state.restore()
    if changed:
        # Not undone (parameters are not copied); say so instead of pretending.
        result = _with_note(result, "the model's forward pass modified these parameters in place "
                            "(gradhealth does not copy parameters, so they stay modified): "
                            + ", ".join(changed))
    return result


def _with_note(result: ProbeResult, note: str) -> ProbeResult:
    from dataclasses import replace

    return replace(result, notes=tuple(result.notes) + (note,))


def _cost_message(model, params, n_params, max_params, n_probes, jacobian, steps, jb) -> str:
    nbytes = sum(p.numel() * p.element_size() for p in params)
    passes = 1 + n_probes
    jac = f" plus {2 * steps + 4} Jacobian-vector products on {jb or 'all'} examples" if jacobian else ""
    return (
        f"The model ({type(model).__name__}) has {n_params:,} parameters ({nbytes / 2**30:.2f} GiB), "
        f"more than max_params={max_params:,}. Probing it costs 1 forward pass and {passes} backward "
        f"passes on the whole batch (about {passes / 2 + 0.5:.1f}x one training step){jac}, and "
        f"memory for one gradient per analysed parameter (+{nbytes / 2**30:.2f} GiB) on top of the "
        "activations of the batch.\n"
        "Fix: pass layers='PATTERN' to analyse only matching layers, e.g. layers='encoder.layers.0.*' "
        "(CLI: --layers PATTERN), jacobian=False to skip the spectrum (CLI: --no-jacobian), a smaller "
        "batch, or max_params=None to run it anyway (CLI: --max-params 0).")


# ------------------------------------------------------------------------------------------
# forward + backward passes
# ------------------------------------------------------------------------------------------
def _forward(model, args, kwargs, rec: Recorder):
    rec.install()
    try:
        with torch.enable_grad(), rec:
            return model(*args, **kwargs)
    except Exception as exc:  # the model's own error, shown with where it happened
        where = rec.stack[-1] if rec.stack else None
        raise _forward_error(model, args, kwargs, exc, where, rec.names) from exc


def _forward_error(model, args, kwargs, exc, where, names) -> ModelError:
    given = "; ".join(f"{label}: {_describe(v)}" for label, v in _input_labels(args, kwargs))
    msg = [f"The model's forward pass failed on the given inputs: {type(exc).__name__}: {_short(exc)}",
           f"Inputs given: {given}."]
    if where is not None:
        mod, margs, mkw = where
        received = _describe(tuple(margs)) + (f" {_describe(mkw)}" if mkw else "")
        msg.append(f"It failed in module {names.get(mod, type(mod).__name__)!r} ({_short(repr(mod), 200)}), "
                   f"which received {received}.")
        first_t = next((v for v in list(margs) if isinstance(v, torch.Tensor)), None)
        for label, v in _input_labels(args, kwargs):
            if first_t is not None and v is first_t:
                msg.append(f"That is {label} as given, unchanged: check its shape against this module.")
                break
    msg.append("Fix: pass inputs of the shape and dtype the model expects "
               "(the CLI takes --input-shape N,D,... or --inputs FILE.pt).")
    return ModelError("\n".join(msg))


def _locate_nonfinite(rec: Recorder) -> tuple[str | None, int]:
    if not rec.completed:
        return None, 0
    counts = nonfinite_counts([t for _, t in rec.completed]).tolist()
    for (name, _), c in zip(rec.completed, counts):
        if c:
            return name, int(c)
    return None, 0


def _make_loss(output, outs, target, loss_fn, gen, device):
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
        check_choice(loss_fn, "loss_fn", _OWNER, ("surrogate", "mse", "ce"))
        if loss_fn == "mse":
            tgt = target if target is not None else torch.randn(o0.shape, generator=gen, device=device,
                                                               dtype=o0.dtype)
            if isinstance(tgt, torch.Tensor):
                tgt = tgt.to(o0.device)
            try:
                return F.mse_loss(o0, tgt), {"kind": "mse", "description": "mean squared error" + (
                    " against a seeded random target" if target is None else "")}
            except Exception as exc:
                raise ModelError(f"loss 'mse' failed on output {_describe(o0)} and target "
                                 f"{_describe(tgt)}: {_short(exc)}\nFix: pass a target of the "
                                 "output's shape.") from exc
        if o0.ndim < 2:
            raise ModelError(f"loss 'ce' needs an output of shape (batch, classes, ...); the model's "
                             f"output is {_describe(o0)}.\nFix: use loss_fn='mse' or 'surrogate'.")
        if target is None:
            shape = (o0.shape[0],) + tuple(o0.shape[2:])
            tgt = torch.randint(0, o0.shape[1], shape, generator=gen, device=device)
        else:
            tgt = target.to(o0.device) if isinstance(target, torch.Tensor) else target
        try:
            return F.cross_entropy(o0, tgt), {"kind": "ce", "description": "cross-entropy" + (
                " against seeded random labels" if target is None else "")}
        except Exception as exc:
            raise ModelError(f"loss 'ce' failed on output {_describe(o0)} and target "
                             f"{_describe(tgt)}: {_short(exc)}\nFix: pass integer class labels of "
                             "shape (batch, ...).") from exc
    if not callable(loss_fn):
        raise ParameterError("loss_fn", _OWNER, "a callable loss_fn(output, target), 'mse', 'ce', "
                             "'surrogate' or None", loss_fn, "leave it out to use the surrogate loss.")
    try:
        loss = loss_fn(output, target)
    except Exception as exc:
        raise ModelError(f"loss_fn raised {type(exc).__name__}: {_short(exc)}\nIt was called as "
                         f"loss_fn(output, target) with output {_describe(output)} and target "
                         f"{_describe(target)}.") from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ModelError(f"loss_fn must return a scalar tensor; it returned {_describe(loss)}.\n"
                         "Fix: reduce the loss, e.g. return loss.mean().")
    return loss.reshape(()), {"kind": "user", "description": getattr(loss_fn, "__name__", "loss_fn")}


def _run(model, args, kwargs, target, loss_fn, rec: Recorder, state, names, selected, *,
         th, seed, n_probes, jacobian, jacobian_batch, lanczos_steps, top_k, notes, mode,
         patterns, t_start, n_params) -> ProbeResult:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed + 1)

    # ---- forward -------------------------------------------------------------------------
    def make_leaves(a, kw, req: bool):
        leaves = []

        def f(v, label):
            if isinstance(v, torch.Tensor) and v.is_floating_point() and req:
                leaf = v.detach().requires_grad_(True)
                leaves.append((label, leaf))
                return leaf
            return v
        a2 = tuple(f(v, f"input[{i}]") for i, v in enumerate(a))
        kw2 = {k: f(v, f"inputs[{k!r}]") for k, v in kw.items()}
        return a2, kw2, leaves

    fargs, fkwargs, leaves = make_leaves(args, kwargs, True)
    try:
        output = _forward(model, fargs, fkwargs, rec)
    except ModelError as err:
        cause = err.__cause__
        if leaves and isinstance(cause, RuntimeError) and "leaf Variable that requires grad" in str(cause):
            # The model writes into its input in place; run it on inputs that need no gradient.
            rec.reset()
            state.restore()
            if mode == "train":
                model.train()
            elif mode == "eval":
                model.eval()
            torch.manual_seed(seed)
            fargs, fkwargs, leaves = make_leaves(args, kwargs, False)
            output = _forward(model, fargs, fkwargs, rec)
            notes.append("the model modifies its input in place, so the input itself gets no "
                         "gradient; the Jacobian is taken from the first layer's output.")
        else:
            raise
    t_forward = time.perf_counter()

    outs = list(iter_floats(output))
    if not outs:
        raise ModelError(f"The model's output has no floating-point tensor (it returned "
                         f"{_describe(output)}); the probe differentiates a floating-point output.\n"
                         "Fix: return logits/activations, not argmax/ids.")
    counts = nonfinite_counts(outs).tolist()
    if any(counts):
        where, c = _locate_nonfinite(rec)
        growth = _forward_growth(rec)
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

    loss, loss_info = _make_loss(output, outs, target, loss_fn, gen, device)
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

    slots = rec.slots
    layer_params = [[p for p in s.module.parameters(recurse=False)] for s in slots]
    # Folded parameters: modules that own parameters but never ran (their parent used the
    # weights directly, e.g. MultiheadAttention.out_proj) are counted with the nearest ancestor
    # layer that ran; modules whose ancestors never ran either are listed as unused.
    slot_of = {id(s.module): i for i, s in enumerate(slots)}
    folded: dict[int, list[str]] = {}
    unused: list[nn.Module] = []
    for m in selected:
        if id(m) in slot_of:
            continue
        name = names[m]
        parent = None
        parts = name.split(".")
        for k in range(len(parts) - 1, 0, -1):
            anc = model.get_submodule(".".join(parts[:k]))
            if id(anc) in slot_of:
                parent = slot_of[id(anc)]
                break
        if parent is None and id(model) in slot_of and name != "(root)":
            parent = slot_of[id(model)]
        if parent is not None:
            layer_params[parent].extend(m.parameters(recurse=False))
            folded.setdefault(parent, []).append(name)
        else:
            unused.append(m)

    # ---- backward pass of the loss ----------------------------------------------------------
    leaf_tensors = [l for _, l in leaves] + list(rec.extra_leaves)
    seen: set = set()
    req_params, param_slot = [], []
    for i, ps in enumerate(layer_params):
        for p in ps:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                req_params.append(p)
                param_slot.append(i)
    rec.pass_name = "loss"
    try:
        grads = torch.autograd.grad(loss, req_params + leaf_tensors, retain_graph=True,
                                    allow_unused=True) if (req_params or leaf_tensors) else ()
    except RuntimeError as exc:
        raise ModelError(f"The backward pass of the loss failed: {_short(exc)}") from exc
    pgrads = list(grads[:len(req_params)])
    n_slots = len(slots)
    if req_params:
        # float64 norms: finite float32 gradients never overflow there, so a non-finite norm
        # means a non-finite gradient entry
        g_norms = tensor_norms(pgrads, device=device, dtype=torch.float64)
        seg = torch.tensor(param_slot, dtype=torch.long, device=device)
        layer_gnorm = segment_norms(g_norms, seg, n_slots)
        layer_got = [0.0] * n_slots
        for i, g in zip(param_slot, pgrads):
            layer_got[i] += g is not None
        global_gnorm = g_norms.square().sum().sqrt()
    else:
        layer_gnorm = None
        layer_got = [0.0] * n_slots
        global_gnorm = None
    all_lp = [p for ps in layer_params for p in ps]
    w_seg = [i for i, ps in enumerate(layer_params) for _ in ps]
    layer_wnorm = segment_norms(tensor_norms(all_lp, device=device), w_seg, n_slots) if all_lp else None
    del grads, pgrads

    # ---- probe passes -------------------------------------------------------------------
    free_params = []
    for i, s in enumerate(slots):
        if any(not c.input_requires_grad for c in s.calls):
            free_params.extend(p for p in layer_params[i] if p.requires_grad)
    probe_inputs = leaf_tensors + [p for p in free_params if all(p is not q for q in leaf_tensors)]
    if not probe_inputs:
        probe_inputs = [p for p in model.parameters() if p.requires_grad]
    w_sq = []
    for j in range(n_probes):
        ws = [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs_g]
        w_sq.append(sum(torch.linalg.vector_norm(w, dtype=torch.float64).square() for w in ws))
        rec.pass_name = f"p{j}"
        torch.autograd.grad(outs_g, probe_inputs, ws, retain_graph=True, allow_unused=True)
    rec.pass_name = None
    out_sq = sum(torch.linalg.vector_norm(o.detach(), dtype=torch.float64).square() for o in outs_g)
    t_backward = time.perf_counter()

    # ---- recurrent replay -----------------------------------------------------------------
    series = []
    for s in slots:
        if isinstance(s.module, RNN_TYPES):
            for c in s.calls:
                try:
                    series.extend(_replay_series(s, c, n_probes, notes))
                except (ReplayError, RuntimeError) as exc:
                    notes.append(f"{s.name}: time-step gradients not measured ({_short(exc, 200)}).")

    # ---- every number, read back at once ------------------------------------------------------
    measured = {
        "layers": [{
            "calls": [{"numel": c.numel, "out_sq": c.out_sq, "stats": c.stats or {},
                       "act": c.act_stats or {}, "loss_sq": c.grad_sq.get("loss"),
                       "probe_sq": [c.grad_sq.get(f"p{j}") for j in range(n_probes)]} for c in s.calls],
            "gnorm": layer_gnorm[i] if layer_gnorm is not None else None,
            "wnorm": layer_wnorm[i] if layer_wnorm is not None else None,
        } for i, s in enumerate(slots)],
        "residual": [{"bn": rr.branch_norm, "sn": rr.skip_norm,
                      "out": [rr.grad_sq_out.get(f"p{j}") for j in range(n_probes)],
                      "diff": [rr.grad_sq_diff.get(f"p{j}") for j in range(n_probes)]}
                     for rr in rec.residuals],
        "series": series,
        "w_sq": w_sq, "out_sq": out_sq, "grad_norm": global_gnorm,
    }
    vals = read_back(measured)
    # structural facts, read while the modules and records are at hand
    ctx = Context(structure=_structure(slots, layer_params), names=names, folded=folded,
                  unused=unused, residual_struct=[(rr.index, [c.slot.index for c in rr.branch_calls])
                                                  for rr in rec.residuals],
                  w_sq=sum(vals["w_sq"]) / len(vals["w_sq"]), out_norm=math.sqrt(vals["out_sq"]),
                  global_gnorm=vals["grad_norm"], thresholds=th, notes=notes)
    rec.release_graph()
    del output, outs, outs_g, loss, measured

    # ---- Jacobian spectrum ----------------------------------------------------------------
    spectrum = None
    t_jac0 = time.perf_counter()
    if not jacobian:
        notes.append("Jacobian spectrum not computed (jacobian=False).")
    else:
        spectrum = _jacobian(model, args, kwargs, slots, leaves, jacobian_batch, lanczos_steps,
                             top_k, seed, mode, state, notes)
    t_jac = time.perf_counter() - t_jac0

    timings = {"forward_s": t_forward - t_start, "backward_s": t_backward - t_forward,
               "jacobian_s": t_jac, "total_s": time.perf_counter() - t_start}
    settings = {"mode": mode, "seed": seed, "n_probes": n_probes, "batch": _batch_size(args, kwargs),
                "jacobian_batch": jacobian_batch, "lanczos_steps": lanczos_steps,
                "layers": patterns, "n_params": n_params, "device": str(device),
                "thresholds": {k: getattr(th, k) for k in ("ratio", "jump", "error_ratio",
                                                           "dead", "saturated")},
                "timings": timings}
    return assemble(slots, vals, layer_got, ctx, spectrum=spectrum, loss_info=loss_info,
                    settings=settings)


def _forward_growth(rec: Recorder) -> str:
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


def _replay_series(slot, call, n_probes, notes) -> list[dict]:
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


def _structure(slots, layer_params) -> list[dict]:
    """Per-layer structural facts read on the host (cheap): chaining and weight statistics."""
    info = []
    for i, s in enumerate(slots):
        m = s.module
        first = s.calls[0]
        d = {"act": first.act_name, "act_params": dict(first.act_params), "direct": first.act_direct,
             "chained": first.chained, "linear": isinstance(m, nn.Linear), "sigma_w2": None,
             "sigma_b2": None, "square": False,
             "norm": isinstance(m, _NORM_TYPES), "recurrent_cell": isinstance(m, nn.RNNCellBase),
             "conv": isinstance(m, nn.modules.conv._ConvNd)}
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                w = m.weight.detach().double()
                d["sigma_w2"] = float(w.square().mean()) * m.in_features
                d["sigma_b2"] = float(m.bias.detach().double().square().mean()) if m.bias is not None else 0.0
            d["square"] = m.in_features == m.out_features
            d["fan"] = (m.in_features, m.out_features)
        ps = layer_params[i]
        n_tr = sum(p.numel() for p in ps if p.requires_grad)
        n_all = sum(p.numel() for p in ps)
        d["n_params"] = n_all
        d["trainable"] = "all" if n_tr == n_all else ("frozen" if n_tr == 0 else "partial")
        info.append(d)
    return info


def _jacobian(model, args, kwargs, slots, leaves, jacobian_batch, steps, top_k, seed, mode,
              state, notes) -> JacobianSpectrum | None:
    B = _batch_size(args, kwargs)
    seq_first = any(isinstance(m, nn.RNNBase) and not m.batch_first for m in model.modules())
    sub = B
    if jacobian_batch is not None and B is not None and B > jacobian_batch and not seq_first:
        sub = jacobian_batch
    if sub != B:
        # the sub-batch slices every input whose first dimension equals the batch size; one
        # that is not batch-major (a (B, B) attention mask, say) breaks the sliced call
        trial: list[str] = []
        res = _jacobian_at(model, args, kwargs, slots, leaves, jacobian_batch, steps, top_k, seed,
                           mode, state, trial, B, sub, seq_first)
        prefix = "Jacobian spectrum not measured: "
        failed = [n.removeprefix(prefix) for n in trial if n.startswith(prefix)]
        if res is not None or not failed:
            notes.extend(trial)
            return res
        notes.append(f"the Jacobian on the first {sub} examples failed ({failed[0]}); it was "
                     "measured on the whole batch instead.")
    return _jacobian_at(model, args, kwargs, slots, leaves, jacobian_batch, steps, top_k, seed, mode,
                        state, notes, B, B, seq_first)


def _jacobian_at(model, args, kwargs, slots, leaves, jacobian_batch, steps, top_k, seed, mode,
                 state, notes, B, sub, seq_first) -> JacobianSpectrum | None:
    def cut(v):
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and B is not None and v.shape[0] == B and sub != B:
            return v[:sub]
        return v
    a = tuple(cut(x) for x in args)
    kw = {k: cut(x) for k, x in kwargs.items()}
    if seq_first and jacobian_batch is not None and B is not None and B > jacobian_batch:
        notes.append("the model has a sequence-first RNN, so the Jacobian uses the whole batch.")
    xs, wrt = [], None
    use_inputs = bool(leaves)
    new_leaves = []
    if use_inputs:
        def mk(x, label):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                leaf = x.detach().requires_grad_(True)
                new_leaves.append((label, leaf))
                return leaf
            return x
        a = tuple(mk(x, f"input[{i}]") for i, x in enumerate(a))
        kw = {k: mk(x, f"inputs[{k!r}]") for k, x in kw.items()}
        xs = [l for _, l in new_leaves]
        wrt = ", ".join(label for label, _ in new_leaves)
    captured = []
    handle = None
    if not use_inputs:
        if not slots:
            notes.append("Jacobian spectrum not measured: no layer ran.")
            return None
        first = slots[0]

        def grab(module, inp, out):
            t = out if isinstance(out, torch.Tensor) else None
            if t is None or captured or not t.is_floating_point():
                return None
            if not t.requires_grad:
                t = t.detach().requires_grad_(True)
                captured.append(t)
                return t
            captured.append(t)
            return None
        handle = first.module.register_forward_hook(grab)
        wrt = f"output of {first.name} (the inputs are not floating-point)"
    try:
        state.restore()  # BatchNorm statistics as the user had them, for a like-for-like pass
        if mode == "train":
            model.train()
        elif mode == "eval":
            model.eval()
        torch.manual_seed(seed)
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 2)
        with torch.enable_grad():
            out = model(*a, **kw)
            if not use_inputs:
                if not captured:
                    notes.append(f"Jacobian spectrum not measured: {slots[0].name} returned no tensor.")
                    return None
                xs = captured[:1]
            ys = [o for o in iter_floats(out) if o.requires_grad]
            if not ys:
                notes.append("Jacobian spectrum not measured: the output does not depend on the input.")
                return None
            return spectrum_from_graph(ys, xs, k=top_k, steps=steps, generator=gen, wrt=wrt,
                                       examples=sub if sub is not None else 1)
    except ModelError as exc:
        notes.append(f"Jacobian spectrum not measured: {exc}.")
    except RuntimeError as exc:
        notes.append("Jacobian spectrum not measured: an operation of the model has no double "
                     f"backward ({_short(exc, 200)}).")
    finally:
        if handle is not None:
            handle.remove()
    return None
