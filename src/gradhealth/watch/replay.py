"""Forensic replay: re-run one step's forward and backward with per-module checks and name
the first place a NaN or an Inf appeared.

What is kept for it, every step, and what it costs
--------------------------------------------------
Nothing is copied in the steady state. A forward pre-hook on the root module keeps a
*reference* to the batch (``args``/``kwargs``; the training loop holds them anyway until the
step ends), the CPU (and, when initialised, CUDA) RNG state (a 5 KB copy, ~1 us), the
autocast state and the train/eval flag; a tensor hook on the model's output keeps a
reference to the gradient of the loss with respect to that output, which autograd computes
anyway. The parameters are not copied: replay runs in the optimizer's step pre-hook (or the
guard's skip callback), *before* the update, when they still hold the values the failing
forward used. Buffers (BatchNorm running statistics) are saved and restored around the
replay, and so is the RNG state, so training continues exactly as if no replay had happened.

What replay reports
-------------------
1. ``input``: the batch itself contains NaN/Inf.
2. ``forward``: the first module (in order of completion, so the innermost one) whose output
   is non-finite. When its inputs were already non-finite the culprit is the functional code
   of its parent between two submodules, and the parent is named. Non-finite parameters of
   the culprit (left by an earlier update) are reported as the cause.
3. ``loss``: the model's outputs are finite but the gradient of the loss with respect to them
   is not: the loss function (outside the model) is to blame.
4. ``backward``: the first module, in the order the backward pass runs, whose input gradient
   (or weight gradient) became non-finite while the gradient arriving at its output was finite.

Replay uses ``torch.autograd.grad``, so the ``.grad`` fields of the parameters (what the
optimizer is about to use) are not touched. Hooks that *users* registered on their modules
run again during the replay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .._text import quoted
from ..stats.tensors import is_dtensor
from ._state import preserved

__all__ = ["Capture", "ReplayReport", "replay_step", "replay_forward_lockstep", "input_check", "tensor_summary"]


@dataclass
class Capture:
    """What one forward call of the watched model needs to be replayed (references only)."""

    args: tuple
    kwargs: dict
    rng_cpu: torch.Tensor | None
    rng_cuda: list | None
    autocast: dict
    training: bool
    grad_enabled: bool
    grad_outputs: list | None = None   # [(output leaf index, grad tensor)], set in backward
    outputs: list | None = None        # the original output leaves (references), set after forward

    @classmethod
    def of_call(cls, module: torch.nn.Module, args: tuple, kwargs: dict) -> Capture:
        """What a forward pre-hook of the root module keeps: references to the batch, the RNG
        states (CPU, and CUDA when initialised), the autocast state and the train/eval and
        grad modes."""
        # (is_initialized, not is_available: the one query that costs nothing on a CPU step;
        # CUDA autocast and RNG exist only once CUDA is initialised)
        cuda = torch.cuda.is_initialized()
        cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
        ac = {}
        for dev in (("cpu", "cuda") if cuda else ("cpu",)):
            try:
                if torch.is_autocast_enabled(dev):
                    ac[dev] = (True, torch.get_autocast_dtype(dev))
            except Exception:  # pragma: no cover - older torch
                pass
        return cls(args, dict(kwargs), torch.get_rng_state(), cuda_rng, ac, module.training,
                   torch.is_grad_enabled())


@dataclass
class ReplayReport:
    """The result of a forensic replay.

    Attributes:
        step: training step replayed.
        found: whether the replay reproduced a non-finite value.
        direction: ``"input"``, ``"forward"``, ``"loss"``, ``"backward"`` or ``"none"``.
        module: qualified name of the culprit module (``""`` is the root), or None.
        module_type: its class name.
        cause: short machine-readable cause (``"nonfinite_input"``, ``"nonfinite_params"``,
            ``"op_output"``, ``"functional_code"``, ``"loss_gradient"``, ``"input_gradient"``,
            ``"weight_gradient"``, ``"not_reproduced"``, ``"no_capture"``).
        summary: one sentence for a person.
        stats: the numbers just before (max |value| of the module's inputs, parameters and
            outputs or gradients, NaN/Inf counts).
        micro_batch: which forward of the step (gradient accumulation) reproduced it.
        seconds: wall time the replay took.
    """

    step: int
    found: bool
    direction: str
    module: str | None = None
    module_type: str | None = None
    cause: str = ""
    summary: str = ""
    stats: dict = field(default_factory=dict)
    micro_batch: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def transient(self) -> bool:
        """The step was re-run and its fault did **not** come back (``cause`` is
        ``"not_reproduced"``): not the data nor the model as they are, but something outside
        the replayed computation -- a non-deterministic kernel, a race, faulty hardware, an
        in-place edit of the gradients. A fault that reproduces is deterministic."""
        return self.cause == "not_reproduced"


def tensor_summary(t: Any) -> dict:
    """NaN/Inf counts and max |finite value| of a tensor (or of the tensors inside a
    structure), for evidence. Slow path only (syncs)."""
    leaves = [x for x in tensor_leaves(t) if x.is_floating_point() or x.is_complex()]
    if not leaves:
        return {}
    n_nan = n_inf = numel = 0
    max_abs = 0.0
    for x in leaves:
        x = x.detach()
        if x.layout != torch.strided:
            x = x.coalesce().values() if x.is_sparse else x.values()
        if x.numel() == 0:
            continue
        xf = x.float() if not x.is_complex() else x.abs().float()
        numel += xf.numel()
        n_nan += int(torch.isnan(xf).sum())
        n_inf += int(torch.isinf(xf).sum())
        fin = xf[torch.isfinite(xf)]
        if fin.numel():
            max_abs = max(max_abs, float(fin.abs().max()))
    return {"numel": numel, "nan": n_nan, "inf": n_inf, "max_abs_finite": max_abs}


def tensor_leaves(x: Any, _depth: int = 0) -> list[torch.Tensor]:
    """The tensors inside ``x``, in a fixed order: pytree's leaves (tuples, lists, dicts,
    namedtuples, registered classes such as HF ``ModelOutput``), and inside dataclass instances
    too, which pytree keeps as opaque leaves (a model returning ``@dataclass Out(logits, aux)``,
    a batch passed as a dataclass). The watcher's output hooks and the replay both walk outputs
    with it, so their leaf indices agree."""
    out = []
    for leaf in pytree.tree_leaves(x):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif _depth < 16 and dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            out.extend(tensor_leaves([getattr(leaf, f.name, None) for f in dataclasses.fields(leaf)],
                                     _depth + 1))
    return out


_tensors = tensor_leaves


def _float_tensors(x) -> list[torch.Tensor]:
    return [t for t in _tensors(x) if t.is_floating_point() or t.is_complex()]


def _all_finite(ts: list[torch.Tensor]) -> bool:
    for t in ts:
        if t.layout != torch.strided:
            t = t.coalesce().values() if t.is_sparse else t.values()
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            return False
    return True


class _Found(Exception):
    """Raised inside a hook to stop the replay at the first non-finite value."""


@contextlib.contextmanager
def _as_captured(model: torch.nn.Module, cap: Capture):
    """The RNG states, autocast and train/eval mode of the captured forward (for its replay)."""
    if cap.rng_cpu is not None:
        torch.set_rng_state(cap.rng_cpu)
    if cap.rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cap.rng_cuda)
    if model.training != cap.training:
        model.train(cap.training)
    with contextlib.ExitStack() as stack:
        for dev, (enabled, dtype) in cap.autocast.items():
            if enabled:
                stack.enter_context(torch.autocast(dev, dtype=dtype))
        yield


def _module_param_stats(mod: torch.nn.Module) -> dict:
    # a sharded (FSDP2) parameter is summarised on this rank's shard: an operation on the
    # DTensor itself would be a collective, which only the rank that found a fault would join
    ps = [p.to_local() if is_dtensor(p) else p for p in mod.parameters(recurse=False)]
    if not ps:
        return {}
    return tensor_summary(ps)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def replay_step(model: torch.nn.Module, captures: list[Capture], step: int,
                names: dict[int, str] | None = None) -> ReplayReport:
    """Replay the forward(s) and backward(s) of one step and name the first non-finite value.

    Args:
        model: the watched root module, with the parameters of the failing step (i.e. before
            the optimizer applied its update).
        captures: the step's forwards (several under gradient accumulation), in order.
        step: the step number (for the report).
        names: ``id(module) -> qualified name``; default from ``model.named_modules()``.

    Returns:
        A :class:`ReplayReport`; ``found`` is False when nothing non-finite reappeared.
    """
    t0 = time.perf_counter()
    if names is None:
        names = {id(m): n for n, m in model.named_modules()}
    caps = [c for c in captures if c.grad_enabled] or list(captures)
    if not caps:
        return ReplayReport(step, False, "none", cause="no_capture",
                            summary=("no forward call of the watched model was captured at this step "
                                     "(was the model called through a submodule?), so it cannot be "
                                     "replayed"), seconds=time.perf_counter() - t0)
    report = None
    with preserved(model):
        for k, cap in enumerate(caps):
            report = _replay_one(model, cap, step, names)
            report.micro_batch = k
            if report.found:
                break
    report.seconds = time.perf_counter() - t0
    return report


def _name(names: dict[int, str], mod: torch.nn.Module) -> str:
    return names.get(id(mod), type(mod).__name__)


def _label(name: str) -> str:
    return "the model (root module)" if name == "" else quoted(name)


def input_check(captures: list[Capture], step: int) -> ReplayReport | None:
    """The report of replay's first check alone, without running the model: the first captured
    batch of the step that holds NaN/Inf, or None (what a sharded model, which cannot be
    re-run rank by rank, still gets)."""
    for k, cap in enumerate(captures):
        report = _input_report(cap, step)
        if report is not None:
            report.micro_batch = k
            return report
    return None


def _input_report(cap: Capture, step: int) -> ReplayReport | None:
    if _all_finite(_float_tensors((cap.args, cap.kwargs))):
        return None
    st = tensor_summary((cap.args, cap.kwargs))
    return ReplayReport(step, True, "input", None, None, "nonfinite_input",
                        f"the input batch of step {step} already contains non-finite values "
                        f"({st.get('nan', 0)} NaN, {st.get('inf', 0)} Inf); the model is not to blame",
                        st)


def replay_forward_lockstep(model: torch.nn.Module, captures: list[Capture], step: int,
                            names: dict[int, str] | None = None) -> ReplayReport:
    """Replay only the forward(s) of one step, every one of them to its end, and name the first
    module whose output was non-finite.

    For a sharded (FSDP2) model, whose forward all-gathers parameters: every rank runs exactly
    the same forwards whatever it finds (no early stop), so their collectives still match. The
    backward is not replayed (its reduce-scatters would be issued outside the training step).
    """
    t0 = time.perf_counter()
    if names is None:
        names = {id(m): n for n, m in model.named_modules()}
    caps = [c for c in captures if c.grad_enabled] or list(captures)
    first: ReplayReport | None = None
    with preserved(model):
        for k, cap in enumerate(caps):
            tr = _Trace(names, stop=False)
            tr.forward(model, cap, grad=False)
            if tr.found and first is None:
                f = tr.found
                first = ReplayReport(step, True, f["direction"], f["module"], f["module_type"], f["cause"],
                                     f["summary"], f["stats"], micro_batch=k)
    if first is None:
        first = ReplayReport(step, False, "none", cause="not_reproduced",
                             summary=("the sharded model's replayed forward is finite on this rank (its "
                                      "backward is not replayed under FSDP2)"))
    first.seconds = time.perf_counter() - t0
    return first


def _replay_one(model: torch.nn.Module, cap: Capture, step: int, names: dict[int, str]) -> ReplayReport:
    # 1) the batch itself
    bad_input = _input_report(cap, step)
    if bad_input is not None:
        return bad_input
    # 2) forward with per-module checks
    tr = _Trace(names)
    outputs = tr.forward(model, cap)
    if tr.found:
        f = tr.found
        return ReplayReport(step, True, f["direction"], f["module"], f["module_type"], f["cause"], f["summary"],
                            f["stats"])
    # 3) the loss's gradient w.r.t. the outputs
    pairs, early = _output_gradients(outputs, cap, step)
    if early is not None:
        return early
    # 4) backward with per-tensor checks, in the order autograd runs
    b = tr.backward(model, pairs)
    if b:
        return ReplayReport(step, True, "backward", b["module"], b["module_type"], b["cause"], b["summary"],
                            b["stats"])
    return ReplayReport(step, False, "none", cause="not_reproduced",
                        summary=("the fault did not reproduce: re-run, the step's forward and backward "
                                 "passes are finite, so it is transient -- it came from outside this "
                                 "forward/backward (gradient accumulation, a custom hook, in-place "
                                 "gradient edits such as clipping) or from a non-deterministic kernel, a "
                                 "race or faulty hardware, not from the data or the model as they are"))


def _output_gradients(outputs, cap: Capture, step: int) -> tuple[list, ReplayReport | None]:
    """``(output, its gradient)`` pairs to back-propagate, or a report when the backward
    cannot or need not be replayed (no kept gradient; the loss's gradient itself is bad)."""
    out_leaves = _tensors(outputs)
    if not cap.grad_outputs:
        return [], ReplayReport(step, False, "none", cause="not_reproduced",
                                summary=("the forward pass is finite and the gradient of the "
                                         "loss w.r.t. the output was not kept, so the backward pass was not "
                                         "replayed"))
    pairs = [(out_leaves[i], g) for i, g in cap.grad_outputs
             if i < len(out_leaves) and out_leaves[i].requires_grad and g is not None]
    gouts = [g for _, g in pairs]
    if not _all_finite(gouts):
        orig = [o for i, o in enumerate(cap.outputs or []) if isinstance(o, torch.Tensor)
                and (o.is_floating_point() or o.is_complex())]
        if orig and not _all_finite(orig):
            # the kept gradient is bad because the *original* output was: re-run, the forward
            # is finite, so the fault did not reproduce (not the loss function's doing)
            return pairs, ReplayReport(
                step, False, "none", cause="not_reproduced",
                stats={"original_output": tensor_summary(orig)},
                summary=("the fault did not reproduce: the step's original forward output was "
                         "non-finite but re-run it is finite, so it is transient -- a "
                         "non-deterministic kernel, a race, faulty hardware, or state that changed "
                         "since (not the data or the model as they are)"))
        st = {"output": tensor_summary([o for o, _ in pairs]), "grad_output": tensor_summary(gouts)}
        return pairs, ReplayReport(step, True, "loss", None, None, "loss_gradient",
                                   f"the model's outputs are finite (max |output| = "
                                   f"{_fmt(st['output'].get('max_abs_finite', math.nan))}) but the gradient of "
                                   "the loss w.r.t. them is not: the loss function (outside the model) produced "
                                   "the first non-finite value", st)
    if not pairs:
        return pairs, ReplayReport(step, False, "none", cause="not_reproduced",
                                   summary="the forward pass is finite and no output requires grad")
    return pairs, None


class _Trace:
    """What one replayed forward saw: which module produced and consumed each tensor, which
    module called which, and the first non-finite value (forward, then backward)."""

    def __init__(self, names: dict[int, str], stop: bool = True):
        self.names = names
        self.stop = stop      # False: record the first non-finite value but run the forward to its end
        self.stack: list[torch.nn.Module] = []
        self.found: dict[str, Any] = {}
        self.produced: dict[int, torch.nn.Module] = {}    # id(tensor) -> module that produced it
        self.consumers: dict[int, list] = {}              # id(tensor) -> modules that took it as input
        self.keep: dict[int, torch.Tensor] = {}           # keep ids stable while we use them
        self.enclosing: dict[int, torch.nn.Module | None] = {}   # id(module) -> the module that called it

    # ------------------------------------------------------------------ forward

    def forward(self, model: torch.nn.Module, cap: Capture, grad: bool = True):
        handles = []
        for mod in model.modules():
            handles.append(mod.register_forward_pre_hook(self._pre, with_kwargs=True))
            handles.append(mod.register_forward_hook(self._post, with_kwargs=True))
        outputs = None
        try:
            with _as_captured(model, cap):
                with torch.set_grad_enabled(grad):
                    try:
                        outputs = model(*cap.args, **cap.kwargs)
                    except _Found:
                        pass
        finally:
            for h in handles:
                h.remove()
        return outputs

    def _pre(self, mod, args, kwargs):
        self.enclosing.setdefault(id(mod), self.stack[-1] if self.stack else None)
        self.stack.append(mod)
        for t in _float_tensors((args, kwargs)):
            self.consumers.setdefault(id(t), []).append(mod)
            self.keep[id(t)] = t
        return None

    def _post(self, mod, args, kwargs, out):
        if self.stack and self.stack[-1] is mod:
            self.stack.pop()
        outs = _float_tensors(out)
        for t in outs:
            self.produced.setdefault(id(t), mod)
            self.keep[id(t)] = t
        if self.found or _all_finite(outs):
            return None
        name = _name(self.names, mod)
        st = {"input": tensor_summary((args, kwargs)), "output": tensor_summary(out)}
        pstats = _module_param_stats(mod)
        if pstats:
            st["params"] = pstats
        if _all_finite(_float_tensors((args, kwargs))):
            self.found.update(self._forward_culprit(mod, name, st, pstats))
        else:
            parent = self.stack[-1] if self.stack else None
            pname = _name(self.names, parent) if parent is not None else None
            self.found.update(
                module=pname if pname is not None else name,
                module_type=type(parent).__name__ if parent is not None else type(mod).__name__,
                cause="functional_code", direction="forward", stats=st,
                summary=(f"the inputs of {_label(name)} were already non-finite: the first "
                         "non-finite value came from functional code (an operation that is not "
                         f"a module) in the forward of {_label(pname) if pname is not None else 'the caller'}"
                         f", before it called {_label(name)}"))
        if self.stop:
            raise _Found()

    @staticmethod
    def _forward_culprit(mod, name: str, st: dict, pstats: dict) -> dict:
        if pstats and (pstats.get("nan", 0) or pstats.get("inf", 0)):
            cause = "nonfinite_params"
            summary = (f"the parameters of {_label(name)} ({type(mod).__name__}) are already "
                       f"non-finite ({pstats['nan']} NaN, {pstats['inf']} Inf), left by an earlier "
                       "update; its forward output is non-finite")
        else:
            cause = "op_output"
            mi = st["input"].get("max_abs_finite", math.nan)
            summary = (f"{_label(name)} ({type(mod).__name__}) produced the first non-finite forward "
                       f"output ({st['output'].get('nan', 0)} NaN, {st['output'].get('inf', 0)} Inf) "
                       f"from finite inputs (max |input| = {_fmt(mi)})")
        return dict(module=name, module_type=type(mod).__name__, cause=cause, summary=summary,
                    stats=st, direction="forward")

    # ------------------------------------------------------------------ backward

    def backward(self, model: torch.nn.Module, pairs: list) -> dict:
        """Back-propagate the kept output gradients with a check on every module input,
        output and weight gradient; the first non-finite one (empty dict if none)."""
        bfound: dict[str, Any] = {}
        bh = []
        params = []
        for mod in model.modules():
            for pn, p in mod.named_parameters(recurse=False):
                if p.requires_grad:
                    params.append(p)
                    bh.append(p.register_hook(self._param_hook(bfound, mod, pn)))
        for tid, t in self.keep.items():
            if t.requires_grad and not t.is_leaf:
                bh.append(t.register_hook(self._tensor_hook(bfound, tid)))
        try:
            torch.autograd.grad([o for o, _ in pairs], params, grad_outputs=[g for _, g in pairs],
                                allow_unused=True)
        except _Found:
            pass
        except RuntimeError as exc:  # autograd may wrap the hook's exception
            if not bfound:
                raise exc
        finally:
            for h in bh:
                h.remove()
        return bfound

    def _tensor_hook(self, bfound: dict, tid: int):
        def hook(g):
            if bfound or g is None or _all_finite([g]):
                return None
            cons = self.consumers.get(tid, [])
            # the consumer that ran last in the forward runs first in the backward
            culprit = cons[-1] if cons else None
            st = {"grad": tensor_summary(g), "value": tensor_summary(self.keep.get(tid))}
            if culprit is not None:
                bfound.update(self._input_gradient(culprit, st))
            else:
                bfound.update(self._functional_gradient(self.produced.get(tid), st))
            raise _Found()
        return hook

    def _input_gradient(self, culprit, st: dict) -> dict:
        name = _name(self.names, culprit)
        ps = _module_param_stats(culprit)
        if ps:
            st["params"] = ps
        return dict(module=name, module_type=type(culprit).__name__, cause="input_gradient", stats=st,
                    summary=(f"the backward of {_label(name)} ({type(culprit).__name__}) produced "
                             "the first non-finite gradient (w.r.t. its input) from a finite "
                             "gradient at its output; its input max |x| = "
                             f"{_fmt(st['value'].get('max_abs_finite', math.nan))}"))

    def _functional_gradient(self, prod, st: dict) -> dict:
        # functional code that uses prod's output runs in the forward of the module that
        # called prod (a container whose output is computed from its last child's): name it
        pname = _name(self.names, prod) if prod is not None else None
        host = self.enclosing.get(id(prod)) if prod is not None else None
        hname = _name(self.names, host) if host is not None else pname
        return dict(module=hname,
                    module_type=type(host if host is not None else prod).__name__ if prod is not None else None,
                    cause="functional_code", stats=st,
                    summary=("the gradient w.r.t. the output of "
                             f"{_label(pname) if pname is not None else 'a tensor'} became "
                             "non-finite in functional code (not a module) that uses that output"
                             + (f", in the forward of {_label(hname)}" if host is not None else "")))

    def _param_hook(self, bfound: dict, mod, pname: str):
        def hook(g):
            if bfound or g is None or _all_finite([g]):
                return None
            name = _name(self.names, mod)
            st = {"grad": tensor_summary(g), "params": _module_param_stats(mod)}
            bfound.update(module=name, module_type=type(mod).__name__, cause="weight_gradient", stats=st,
                          summary=(f"the weight gradient {pname!r} of {_label(name)} "
                                   f"({type(mod).__name__}) was the first non-finite gradient"))
            raise _Found()
        return hook
