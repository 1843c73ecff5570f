"""Recording one forward pass (internal).

Three instruments, all removed when the probe ends:

* module hooks on every module: a stack of the modules currently running (to say *where* a
  forward pass failed or first went non-finite) and, for parameter-owning modules (the
  *layers*), a :class:`CallRecord` per call with device-side statistics of the output;
* tensor hooks on each recorded tensor, which receive ``dL/d(tensor)`` during every backward
  pass. A hook registered before an in-place operation receives the gradient with respect to
  the tensor *before* that operation (documented autograd behaviour), so ``nn.ReLU(inplace=True)``
  after a layer does not change what is measured for that layer;
* a :class:`~torch.overrides.TorchFunctionMode` that sees functional calls: elementwise
  activations (attributed to the layer that just ran: ``F.relu`` inside a ``forward`` is seen
  as well as ``nn.ReLU``) and tensor additions (``x + f(x)`` where ``x`` is an autograd ancestor
  of ``f(x)`` and the path between them contains a layer: a residual block).

Nothing here reads a value back to the host: statistics stay on the device until the probe
reads them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .._vocab import function_activations
from ..stats import activation_stats

# --- which functions are elementwise activations / additions ------------------------------
#: ``{callable: canonical activation name}``: every functional activation and the activation
#: methods of ``torch.Tensor`` / ``torch._C.TensorBase`` (the vocabulary's table, read-only).
_ACT_FUNCS: dict = function_activations()


def _tensor_methods(*names):
    out = []
    for n in names:
        for owner in (torch.Tensor, torch._C.TensorBase):
            fn = getattr(owner, n, None)
            if fn is not None:
                out.append(fn)
    return out


_ADD_FUNCS = set([torch.add] + _tensor_methods("add", "add_", "__add__", "__radd__", "__iadd__"))

#: Upper bound on autograd nodes visited when testing whether an addition is residual.
_BFS_BUDGET = 1000

_CONV_TYPES = (nn.modules.conv._ConvNd,)
RNN_TYPES = (nn.RNNBase,)


def _sq64(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares in float64 (no overflow for float32/16 entries), as a 0-dim tensor."""
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float64).square()


def first_float(obj):
    """The first floating-point tensor in a (nested) output structure, or None."""
    for t in iter_floats(obj):
        return t
    return None


def iter_floats(obj, _depth: int = 0):
    """Floating-point tensors in ``obj`` (tensor, sequence, mapping, dataclass), in order."""
    if _depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_floats(v, _depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_floats(v, _depth + 1)
    elif hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            yield from iter_floats(getattr(obj, k, None), _depth + 1)


@dataclass(eq=False)
class LayerSlot:
    module: nn.Module
    name: str
    index: int
    calls: list = field(default_factory=list)

    @property
    def type(self) -> str:
        return type(self.module).__name__


@dataclass(eq=False)
class CallRecord:
    """One call of a layer's forward (device tensors; read back later)."""

    slot: LayerSlot
    call: int
    out: torch.Tensor | None
    out_shape: tuple
    numel: int
    stats: dict | None
    out_sq: torch.Tensor | None
    input_requires_grad: bool
    chained: bool
    act_name: str | None = None
    act_params: dict = field(default_factory=dict)
    act_stats: dict | None = None
    act_direct: bool = False
    act_out: torch.Tensor | None = None
    grad_sq: dict = field(default_factory=dict)         # pass -> 0-dim float64 tensor
    # recurrent modules only: every float output, their gradients per pass, and the call args
    outs: tuple = ()
    out_grads: dict = field(default_factory=dict)       # pass -> {i: grad}
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(eq=False)
class ResidualRecord:
    index: int
    skip: torch.Tensor
    out: torch.Tensor
    branch_norm: torch.Tensor
    skip_norm: torch.Tensor
    branch_calls: list
    grad_sq_skip: dict = field(default_factory=dict)
    grad_sq_out: dict = field(default_factory=dict)
    grad_sq_diff: dict = field(default_factory=dict)
    _g_out: dict = field(default_factory=dict)


class _Spy(TorchFunctionMode):
    def __init__(self, recorder: Recorder):
        super().__init__()
        self.rec = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if rec.active:
            try:
                name = _ACT_FUNCS.get(func)
                is_add = name is None and func in _ADD_FUNCS
            except TypeError:  # unhashable callable
                name, is_add = None, False
            if name is not None:
                return rec.on_activation(func, name, args, kwargs)
            if is_add:
                return rec.on_add(func, args, kwargs)
        return func(*args, **kwargs)


class Recorder:
    """Hooks + spy for one probe. Use as a context manager around the forward pass."""

    def __init__(self, model: nn.Module, layer_modules: list[nn.Module], names: dict):
        self.model = model
        self.names = names
        self.layer_set = {id(m): m for m in layer_modules}
        self._handles: list = []
        self._tensor_handles: list = []
        self.reset()

    def reset(self) -> None:
        """Remove every hook and forget every record (before running the forward again)."""
        self.remove()
        self.slots: list[LayerSlot] = []
        self._slot_of: dict[int, LayerSlot] = {}
        self.stack: list[tuple[nn.Module, tuple, dict]] = []
        self.completed: list[tuple[str, torch.Tensor]] = []
        self.active = False
        self.pass_name: str | None = None
        self.last_call: CallRecord | None = None
        self.layer_out_nodes: dict = {}
        self.extra_leaves: list[torch.Tensor] = []
        self.residuals: list[ResidualRecord] = []
        self._spy = _Spy(self)
        self._executing_layers = 0

    # -- installation ---------------------------------------------------------------------
    def install(self) -> None:
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles + self._tensor_handles:
            try:
                h.remove()
            except Exception:  # a handle whose tensor is already gone
                pass
        self._handles.clear()
        self._tensor_handles.clear()

    def release_graph(self) -> None:
        """Drop every reference to graph tensors (after the backward passes)."""
        for s in self.slots:
            for c in s.calls:
                c.out = c.act_out = None
                c.outs, c.args, c.kwargs, c.out_grads = (), (), {}, {}
        for r in self.residuals:
            r.skip = r.out = None
            r._g_out = {}
        self.layer_out_nodes.clear()
        self.extra_leaves.clear()
        self.completed.clear()
        self.stack.clear()
        self.last_call = None

    # -- module hooks ---------------------------------------------------------------------
    def _pre(self, module, args, kwargs):
        if not self.active:
            return None
        self.stack.append((module, args, kwargs))
        if id(module) in self.layer_set:
            self._executing_layers += 1
        return None

    def _post(self, module, args, kwargs, output):
        if not self.active:
            return None
        if self.stack and self.stack[-1][0] is module:
            self.stack.pop()
        is_layer = id(module) in self.layer_set
        if is_layer:
            self._executing_layers -= 1
        out_t = first_float(output)
        if out_t is not None:
            self.completed.append((self.names.get(module, type(module).__name__), out_t))
        if not is_layer:
            return None
        return self._record_call(module, args, kwargs, output, out_t)

    def _record_call(self, module, args, kwargs, output, out_t):
        slot = self._slot_of.get(id(module))
        if slot is None:
            slot = LayerSlot(module, self.names.get(module, type(module).__name__), len(self.slots))
            self.slots.append(slot)
            self._slot_of[id(module)] = slot
        replaced = None
        if (out_t is not None and not out_t.requires_grad and isinstance(output, torch.Tensor)
                and torch.is_grad_enabled()):
            # Nothing upstream needs a gradient (a frozen first layer fed integer ids): make its
            # output a leaf so that the backward signal can still be measured here. Nothing
            # upstream has a gradient to change.
            replaced = out_t.detach().requires_grad_(True)
            self.extra_leaves.append(replaced)
            out_t = output = replaced
        inputs = list(iter_floats(args)) + list(iter_floats(kwargs))
        inp = inputs[0] if inputs else None
        last = self.last_call
        chained = inp is not None and last is not None and (inp is last.act_out or inp is last.out)
        rec = CallRecord(
            slot=slot, call=len(slot.calls), out=out_t,
            out_shape=tuple(out_t.shape) if out_t is not None else (),
            numel=out_t.numel() if out_t is not None else 0,
            stats=activation_stats(out_t) if out_t is not None else None,
            out_sq=_sq64(out_t) if out_t is not None else None,
            input_requires_grad=any(t.requires_grad for t in inputs), chained=chained)
        slot.calls.append(rec)
        if out_t is not None and out_t.requires_grad:
            self._tensor_handles.append(out_t.register_hook(self._grad_hook(rec)))
            if out_t.grad_fn is not None:
                self.layer_out_nodes[out_t.grad_fn] = rec
        if isinstance(module, RNN_TYPES):
            rec.outs = tuple(iter_floats(output))
            rec.args, rec.kwargs = tuple(args), dict(kwargs)
            for i, t in enumerate(rec.outs):
                if t.requires_grad:
                    self._tensor_handles.append(t.register_hook(self._keep_hook(rec, i)))
        self.last_call = rec
        return replaced

    # -- gradient hooks -------------------------------------------------------------------
    def _grad_hook(self, rec: CallRecord):
        def hook(grad):
            p = self.pass_name
            if p is not None and grad is not None:
                # float64: squares of float32 gradients cannot overflow there, so a non-finite
                # sum means a non-finite gradient entry, not a large one
                sq = _sq64(grad)
                rec.grad_sq[p] = rec.grad_sq[p] + sq if p in rec.grad_sq else sq
            return None
        return hook

    def _keep_hook(self, rec: CallRecord, i: int):
        def hook(grad):
            p = self.pass_name
            if p is not None and grad is not None:
                rec.out_grads.setdefault(p, {})[i] = grad.detach()
            return None
        return hook

    def _residual_out_hook(self, r: ResidualRecord):
        def hook(grad):
            p = self.pass_name
            if p is not None and grad is not None:
                g = grad.detach()
                r.grad_sq_out[p] = _sq64(g)
                r._g_out[p] = g
            return None
        return hook

    def _residual_skip_hook(self, r: ResidualRecord):
        # The block output's gradient arrives first (it is downstream); the skip input's
        # gradient is that plus the branch's contribution J_branch^T g_out, so their
        # difference is the branch's share (assuming the skip input feeds only this block).
        def hook(grad):
            p = self.pass_name
            if p is not None and grad is not None:
                g = grad.detach()
                r.grad_sq_skip[p] = _sq64(g)
                g_out = r._g_out.get(p)
                if g_out is not None:
                    r.grad_sq_diff[p] = _sq64(g - g_out)
            return None
        return hook

    # -- spy callbacks --------------------------------------------------------------------
    def on_activation(self, func, name, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        out = func(*args, **kwargs)
        call = self.last_call
        if (call is None or call.act_name is not None or not isinstance(out, torch.Tensor)
                or not out.is_floating_point()):
            return out
        direct = x is call.out
        if not direct and self._executing_layers > 0:
            return out  # inside a layer's own forward: part of that layer, not after it
        params: dict = {}
        bounds = None
        if name == "leaky_relu":
            ns = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            params["alpha"] = float(ns)
        elif name == "hard_tanh":
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            bounds = (float(lo), float(hi))
            if bounds == (0.0, 6.0):
                name = "relu6"
        unit_dim = 1 if (isinstance(call.slot.module, _CONV_TYPES) and out.ndim > 2) else -1
        call.act_name = name
        call.act_params = params
        call.act_stats = activation_stats(out, name, unit_dim=unit_dim, bounds=bounds)
        call.act_direct = direct
        call.act_out = out
        return out

    def on_add(self, func, args, kwargs):
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", 1)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and alpha == 1
                and a.is_floating_point() and b.is_floating_point() and a.shape == b.shape
                and a.requires_grad and b.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        found, calls = self._ancestor(a, b)
        skip, branch = a, b
        if not found:
            found, calls = self._ancestor(b, a)
            skip, branch = b, a
        if not found or not calls:
            return func(*args, **kwargs)
        bn = branch.detach().float().norm()
        sn = skip.detach().float().norm()
        out = func(*args, **kwargs)
        r = ResidualRecord(len(self.residuals), skip, out, bn, sn, calls)
        self._tensor_handles.append(out.register_hook(self._residual_out_hook(r)))
        self._tensor_handles.append(skip.register_hook(self._residual_skip_hook(r)))
        self.residuals.append(r)
        return out

    def _ancestor(self, a: torch.Tensor, b: torch.Tensor):
        """Is ``a`` an autograd ancestor of ``b``? Also the layer calls met on the way."""
        target = a.grad_fn
        leaf = a if target is None else None
        start = b.grad_fn
        if start is None:
            return False, []
        seen = set()
        queue = [start]
        calls = []
        found = False
        while queue and len(seen) < _BFS_BUDGET:
            node = queue.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if target is not None and node is target:
                found = True
                continue
            if leaf is not None and getattr(node, "variable", None) is leaf:
                found = True
                continue
            rec = self.layer_out_nodes.get(node)
            if rec is not None:
                calls.append(rec)
            queue.extend(n for n, _ in node.next_functions)
        return found, calls

    # -- context --------------------------------------------------------------------------
    def __enter__(self):
        self.active = True
        self._spy.__enter__()
        return self

    def __exit__(self, *exc):
        self.active = False
        self._spy.__exit__(*exc)
        return False
