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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelError, ParameterError
from ..stats import segment_norms, tensor_norms
from . import _analysis as A
from ._assemble import Context, assemble
from ._capture import Recorder
from ._inputs import batch_size, make_leaves, prepare_inputs, short, split_inputs
from ._options import OWNER, Batch, ProbeMode, ProbeOptions, Scope
from ._passes import checked_loss, checked_outputs, forward, recurrent_series
from ._state import ModelState, cuda_devices, forked_rng, set_mode
from .jacobian import model_spectrum
from .result import ProbeResult

__all__ = ["probe"]

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


# ------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------
# noqa below: probe() keeps its documented keyword options (public API); they are checked
# once into a ProbeOptions and passed on as that.
def probe(model: nn.Module, inputs: Any, target: Any = None,  # noqa: PLR0913
          loss_fn: Callable | str | None = None, *, mode: ProbeMode = "train",
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
        ParameterError: a parameter breaks its rule (the message says which and how to fix it),
            e.g. ``inputs`` is an empty batch.
        ModelError: the model has no parameters, its forward pass fails on ``inputs`` (the
            message shows the model's error and the module where it happened), its output has
            no floating-point tensor, it is larger than ``max_params``, or nothing can be
            measured: every analysed parameter is frozen, or none takes part in the loss (no
            verdict is given without a measurement).
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
        raise ParameterError("model", OWNER, "a torch.nn.Module", type(model).__name__,
                             "pass the model object itself (e.g. probe(net, x)).")
    compiled = isinstance(getattr(model, "_orig_mod", None), nn.Module)
    if compiled:  # torch.compile: the probe needs eager hooks, and the weights are the same
        model = model._orig_mod
    opts = ProbeOptions(mode=mode, seed=seed, n_probes=n_probes, jacobian=jacobian,
                        jacobian_batch=jacobian_batch, lanczos_steps=lanczos_steps, top_k=top_k,
                        max_params=max_params, thresholds=thresholds).checked()
    params = list(model.parameters())
    if not params:
        raise ModelError(
            f"The model ({type(model).__name__}) has no parameters, so there is no gradient to "
            "probe. gradhealth measures gradients with respect to parameters: pass a model with "
            "at least one nn.Parameter (a module built from nn.Linear, nn.Conv2d, ...).")
    names, selected, patterns = _select_layers(model, layers)
    _check_trainable(model, selected, patterns)
    opts = replace(opts, patterns=patterns)
    scope = Scope(names=names, selected=selected, n_params=sum(p.numel() for p in params))
    if opts.max_params is not None and scope.n_params > opts.max_params and patterns is None:
        raise ModelError(_cost_message(model, params, scope.n_params, opts))

    args, kwargs = split_inputs(inputs)
    notes: list[str] = []
    if compiled:
        notes.append("the torch.compile'd module was probed through its original (eager) module.")
    args, kwargs = prepare_inputs(args, kwargs, params, notes)
    if batch_size(args, kwargs) == 0:
        raise ParameterError("inputs", OWNER, "a batch of at least one example", "a batch of 0 examples",
                             "pass a non-empty batch (an empty one gives no gradient, so no verdict).")
    batch = Batch(args=args, kwargs=kwargs, target=target, loss_fn=loss_fn)

    state = ModelState(model)
    rec = Recorder(model, selected, names)
    try:
        set_mode(model, opts.mode)
        # a diagnostic is often called from evaluation code: gradients are needed here
        with torch.inference_mode(False), torch.enable_grad(), forked_rng(opts.seed, cuda_devices()):
            result = _run(model, batch, rec, state, scope, opts, notes, t_start)
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


def _check_trainable(model: nn.Module, selected: list, patterns) -> None:
    """ModelError when no analysed layer has a parameter that requires grad (nothing to measure)."""
    if any(p.requires_grad for m in selected for p in m.parameters(recurse=False)):
        return
    what = "layers matching " + ", ".join(map(repr, patterns)) if patterns else "the model's layers"
    raise ModelError(
        f"Every parameter of {what} ({type(model).__name__}) is frozen (requires_grad=False), so "
        "there is no parameter gradient to diagnose (no verdict without a measurement).\n"
        "Fix: probe with the parameters trainable, e.g. model.requires_grad_(True) before the "
        "probe (and back to False afterwards), or select trainable layers with layers='PATTERN'.")


def _select_layers(model: nn.Module, layers) -> tuple[dict, list, list[str] | None]:
    """``(names, selected, patterns)``: module -> qualified name, the parameter-owning modules
    that ``layers`` selects (all of them for None), and ``layers`` as a list of patterns."""
    names: dict = {}
    for name, m in model.named_modules():
        names.setdefault(m, name or "(root)")
    owners = [m for m in names if next(m.parameters(recurse=False), None) is not None]
    if layers is None:
        return names, owners, None
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ParameterError("layers", OWNER, "a glob pattern or a list of glob patterns",
                             layers, "pass e.g. layers='encoder.layers.*'.")
    selected = [m for m in owners if any(fnmatch.fnmatchcase(names[m], p) for p in patterns)]
    if not selected:
        listed = ", ".join(names[m] for m in owners[:12]) + (" ..." if len(owners) > 12 else "")
        raise ParameterError("layers", OWNER, "a pattern matching at least one layer", layers,
                             f"layers are named like: {listed}")
    return names, selected, patterns


def _with_note(result: ProbeResult, note: str) -> ProbeResult:
    return replace(result, notes=tuple(result.notes) + (note,))


def _cost_message(model, params, n_params, opts: ProbeOptions) -> str:
    max_params, n_probes, jacobian = opts.max_params, opts.n_probes, opts.jacobian
    steps, jb = opts.lanczos_steps, opts.jacobian_batch
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
# the phases of one probe: passes (forward, loss, probes, replay, read-back), then Jacobian
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Passes:
    """What the passes leave for the Jacobian and the assembly: host numbers, no graph."""

    slots: list
    vals: dict
    layer_got: list
    ctx: Context
    loss_info: dict
    leaves: list
    t_forward: float
    t_backward: float


def _run(model, batch: Batch, rec: Recorder, state: ModelState, scope: Scope, opts: ProbeOptions,
         notes: list[str], t_start: float) -> ProbeResult:
    passes = _measure(model, batch, rec, state, scope, opts, notes)
    if not any(got > 0 for got in passes.layer_got):
        raise ModelError(
            "None of the analysed layers' parameters takes part in the loss: autograd gives every one "
            "of them no gradient, so there is nothing to diagnose (no verdict without a measurement)."
            + (" Layers that never ran: " + ", ".join(scope.names[m] for m in passes.ctx.unused[:8]) + "."
               if passes.ctx.unused else "")
            + "\nFix: make forward() return a value computed from the layers (not the input, a "
            "detached tensor or a constant), pass a loss_fn that uses the output, or select the "
            "layers that take part with layers='PATTERN'.")
    spectrum = None
    t_jac0 = time.perf_counter()
    if not opts.jacobian:
        notes.append("Jacobian spectrum not computed (jacobian=False).")
    else:
        spectrum = model_spectrum(model, batch.args, batch.kwargs, passes.slots, passes.leaves, opts,
                                  state, notes)
    t_jac = time.perf_counter() - t_jac0

    timings = {"forward_s": passes.t_forward - t_start, "backward_s": passes.t_backward - passes.t_forward,
               "jacobian_s": t_jac, "total_s": time.perf_counter() - t_start}
    th = opts.thresholds
    settings = {"mode": opts.mode, "seed": opts.seed, "n_probes": opts.n_probes,
                "batch": batch_size(batch.args, batch.kwargs),
                "jacobian_batch": opts.jacobian_batch, "lanczos_steps": opts.lanczos_steps,
                "layers": opts.patterns, "n_params": scope.n_params,
                "device": str(next(model.parameters()).device),
                "thresholds": {k: getattr(th, k) for k in ("ratio", "jump", "error_ratio",
                                                           "dead", "saturated")},
                "timings": timings}
    return assemble(passes.slots, passes.vals, passes.layer_got, passes.ctx, spectrum=spectrum,
                    loss_info=passes.loss_info, settings=settings)


def _measure(model, batch: Batch, rec: Recorder, state: ModelState, scope: Scope, opts: ProbeOptions,
             notes: list[str]) -> _Passes:
    """Forward, loss, backward of the loss, probe passes, recurrent replay, one read-back.

    Every graph tensor is local here (or held by ``rec`` until ``rec.release_graph()``), so
    the graph is gone when this returns, before the Jacobian reruns the model."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(opts.seed + 1)
    output, leaves = _forward_with_leaves(model, batch, rec, state, opts, notes)
    t_forward = time.perf_counter()
    outs, outs_g = checked_outputs(output, rec)
    loss, loss_info = checked_loss(output, outs, batch, gen, device)

    slots = rec.slots
    layer_params, folded, unused = _layer_params(model, slots, scope)
    leaf_tensors = [l for _, l in leaves] + list(rec.extra_leaves)
    norms = _loss_backward(loss, rec, layer_params, leaf_tensors, device)
    w_sq, out_sq = _probe_passes(model, rec, layer_params, leaf_tensors, outs_g, gen, opts.n_probes)
    t_backward = time.perf_counter()
    series = recurrent_series(slots, opts.n_probes, notes)

    measured = _measured(rec, norms, series, w_sq, out_sq, opts.n_probes)
    vals = read_back(measured)
    # structural facts, read while the modules and records are at hand
    ctx = Context(structure=_structure(slots, layer_params), names=scope.names, folded=folded,
                  unused=unused, residual_struct=[(rr.index, [c.slot.index for c in rr.branch_calls])
                                                  for rr in rec.residuals],
                  w_sq=sum(vals["w_sq"]) / len(vals["w_sq"]), out_norm=math.sqrt(vals["out_sq"]),
                  global_gnorm=vals["grad_norm"], thresholds=opts.thresholds, notes=notes)
    rec.release_graph()
    del output, outs, outs_g, loss, measured
    return _Passes(slots=slots, vals=vals, layer_got=norms["got"], ctx=ctx, loss_info=loss_info,
                   leaves=leaves, t_forward=t_forward, t_backward=t_backward)


def _forward_with_leaves(model, batch: Batch, rec: Recorder, state: ModelState, opts: ProbeOptions,
                         notes: list[str]) -> tuple[Any, list]:
    """The recorded forward pass on input leaves that require grad, and those leaves; on no
    leaves when the model writes into its input in place (which a leaf forbids)."""
    fargs, fkwargs, leaves = make_leaves(batch.args, batch.kwargs, True)
    try:
        output = forward(model, fargs, fkwargs, rec)
    except ModelError as err:
        cause = err.__cause__
        if leaves and isinstance(cause, RuntimeError) and "leaf Variable that requires grad" in str(cause):
            # The model writes into its input in place; run it on inputs that need no gradient.
            rec.reset()
            state.restore()
            set_mode(model, opts.mode)
            torch.manual_seed(opts.seed)
            fargs, fkwargs, leaves = make_leaves(batch.args, batch.kwargs, False)
            output = forward(model, fargs, fkwargs, rec)
            notes.append("the model modifies its input in place, so the input itself gets no "
                         "gradient; the Jacobian is taken from the first layer's output.")
        else:
            raise
    return output, leaves


def _layer_params(model, slots, scope: Scope) -> tuple[list[list], dict[int, list[str]], list[nn.Module]]:
    """Each layer's parameters, the modules folded into a layer, and the unused modules.

    Folded parameters: modules that own parameters but never ran (their parent used the
    weights directly, e.g. MultiheadAttention.out_proj) are counted with the nearest ancestor
    layer that ran; modules whose ancestors never ran either are listed as unused."""
    layer_params = [[p for p in s.module.parameters(recurse=False)] for s in slots]
    slot_of = {id(s.module): i for i, s in enumerate(slots)}
    folded: dict[int, list[str]] = {}
    unused: list[nn.Module] = []
    for m in scope.selected:
        if id(m) in slot_of:
            continue
        name = scope.names[m]
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
    return layer_params, folded, unused


def _loss_backward(loss, rec: Recorder, layer_params, leaf_tensors, device) -> dict:
    """The backward pass of the loss (the recorder's hooks see ``dL/d(layer output)``) and the
    per-layer gradient and weight norms (device tensors): ``gnorm``, ``wnorm``, ``grad_norm``
    (global), ``got`` (per layer, how many of its parameters received a gradient)."""
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
        raise ModelError(f"The backward pass of the loss failed: {short(exc)}") from exc
    pgrads = list(grads[:len(req_params)])
    n_slots = len(rec.slots)
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
    return {"gnorm": layer_gnorm, "wnorm": layer_wnorm, "grad_norm": global_gnorm, "got": layer_got}


def _probe_passes(model, rec: Recorder, layer_params, leaf_tensors, outs_g, gen, n_probes: int):
    """``n_probes`` backward passes of Gaussian cotangents at the output (the recorder's hooks
    accumulate ``||J_l^T w||^2`` per layer); returns ``(||w||^2 per pass, ||y||^2)``."""
    free_params = []
    for i, s in enumerate(rec.slots):
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
    return w_sq, out_sq


def _measured(rec: Recorder, norms: dict, series: list, w_sq: list, out_sq, n_probes: int) -> dict:
    """Every number of the passes (device tensors), in the structure ``read_back`` returns as
    floats and ``_assemble`` reads."""
    layer_gnorm, layer_wnorm = norms["gnorm"], norms["wnorm"]
    return {
        "layers": [{
            "calls": [{"numel": c.numel, "out_sq": c.out_sq, "stats": c.stats or {},
                       "act": c.act_stats or {}, "loss_sq": c.grad_sq.get("loss"),
                       "probe_sq": [c.grad_sq.get(f"p{j}") for j in range(n_probes)]} for c in s.calls],
            "gnorm": layer_gnorm[i] if layer_gnorm is not None else None,
            "wnorm": layer_wnorm[i] if layer_wnorm is not None else None,
        } for i, s in enumerate(rec.slots)],
        "residual": [{"bn": rr.branch_norm, "sn": rr.skip_norm,
                      "out": [rr.grad_sq_out.get(f"p{j}") for j in range(n_probes)],
                      "diff": [rr.grad_sq_diff.get(f"p{j}") for j in range(n_probes)]}
                     for rr in rec.residuals],
        "series": series,
        "w_sq": w_sq, "out_sq": out_sq, "grad_norm": norms["grad_norm"],
    }


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

