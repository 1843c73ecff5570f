"""The watcher on a ``torch.compile``d model: the user's names, hooks dynamo does not trace.

Three things make a compiled model look different to the watcher, and each has its answer here:

* ``torch.compile(model)`` returns an ``OptimizedModule`` that holds the user's module as
  ``_orig_mod``: every qualified name gains an ``_orig_mod.`` segment (also below a submodule
  replaced by its compiled version). :func:`unwrap` gives the user's module back and
  :func:`named_modules` the user's names, where layers, buffers and the replay's module names
  are read.
* A hook that runs inside a compiled region (the root hooks of a model watched *before* it
  was compiled, or of ``model.compile()``) would be traced by dynamo, frame after frame, with a
  graph break at every host read. The watcher's hook entry points run through
  :func:`run_eager`, a ``torch.compiler.disable``d trampoline: dynamo sees one call it may not
  trace (once, when the hook is first compiled) and the hook runs eagerly, as on an eager model.
  Nothing here imports ``torch._dynamo`` (a second of start-up): an eager user never pays it.
* The detail steps' per-layer forward hooks would run inside the compiled forward: a hook
  registered after the first compiled call never fires (dynamo does not guard on module hooks)
  and one present at compile time breaks the graph. :func:`install_layer_hooks` keeps them off
  the compiled forward; on a detail step the forward statistics (activation statistics,
  forward order) come from :func:`shadow_forward`, one more eager forward of the same batch
  without autograd, and one :class:`~gradhealth.watch.runlog.WatchWarning` says what stays
  missing (the gradients w.r.t. layer outputs, which need the real backward). Everything read
  in the optimizer hooks (gradient norms per layer and global, before and after clipping,
  NaN/Inf counts, parameter norms, update ratios, the guard) and the forensic replay (an eager
  re-run of the user's module, under :func:`eager_stance`) work as on an eager model.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from typing import Any

import torch
from torch import nn

from ._state import preserved

__all__ = ["dynamo_loaded", "unwrap", "named_modules", "named_buffers", "compiled_call", "run_eager", "hook_class",
           "install_layer_hooks", "not_collected", "eager_stance", "shadow_forward"]

_EAGER: list[Any] = []           # the disabled trampoline, made once dynamo is loaded
_WARNED: weakref.WeakSet = weakref.WeakSet()   # watchers that said what a compiled model loses


def dynamo_loaded() -> bool:
    """Whether ``torch._dynamo`` is imported (by ``torch.compile``, or by an optimizer step)."""
    return "torch._dynamo" in sys.modules


def _optimized_module() -> type | None:
    ef = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(ef, "OptimizedModule", None) if ef is not None else None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``'s ``OptimizedModule`` wrapper(s) (``model`` itself
    when it is not compiled that way)."""
    cls = _optimized_module()
    while cls is not None and isinstance(model, cls):
        model = model._orig_mod
    return model


def named_modules(model: nn.Module, wrappers: bool = False):
    """``model.named_modules()`` with the user's names: ``OptimizedModule`` wrappers (the root's,
    or a submodule's replaced by ``torch.compile(submodule)``) are looked through, so neither
    they nor an ``_orig_mod`` name segment appear (``wrappers``: each wrapper is yielded too,
    just before the module it wraps, under the same name). A model without such a wrapper
    gets ``named_modules()`` itself."""
    cls = _optimized_module()
    if cls is None or not any(isinstance(m, cls) for m in model.modules()):
        yield from model.named_modules(remove_duplicate=True)
        return
    memo: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:    # depth first, children in order: named_modules' order
        prefix, mod = stack.pop()
        while isinstance(mod, cls):
            if wrappers and id(mod) not in memo:
                memo.add(id(mod))
                yield prefix, mod
            mod = mod._orig_mod
        if id(mod) in memo:
            continue
        memo.add(id(mod))
        yield prefix, mod
        kids = [(f"{prefix}.{n}" if prefix else n, c) for n, c in mod._modules.items() if c is not None]
        stack.extend(reversed(kids))


def named_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model.named_buffers()`` in the user's names (see :func:`named_modules`); the same list
    as ``named_buffers()`` for a model without a compiled wrapper inside."""
    cls = _optimized_module()
    if cls is None or not any(isinstance(m, cls) for m in model.modules()):
        return list(model.named_buffers())
    seen: set[int] = set()
    out = []
    for mn, m in named_modules(model):
        for bn, b in m.named_buffers(recurse=False):
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                out.append((f"{mn}.{bn}" if mn else bn, b))
    return out


def compiled_call(model: nn.Module) -> str | None:
    """How a call of ``model`` happening now runs compiled, in whole or in part
    (``"torch.compile(model)"``, ``"model.compile()"``, ``"a compiled submodule"``), or None
    when every layer's forward runs eagerly."""
    if not dynamo_loaded():
        return None
    cls = _optimized_module()
    if cls is not None and isinstance(model, cls):
        return "torch.compile(model)"
    if getattr(model, "_compiled_call_impl", None) is not None:
        return "model.compile()"
    inside = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_is_in_optimized_module", None)
    if inside is not None and inside():
        # the watched module is called from a compiled wrapper's forward (watch, then compile)
        return "torch.compile(model)"
    for m in model.modules():
        if (cls is not None and isinstance(m, cls)) or getattr(m, "_compiled_call_impl", None) is not None:
            return "a compiled submodule"
    return None


_HOOK_CLASSES: list[type] = []   # the hook wrappers whose __call__ is disabled once dynamo traced one


def hook_class(cls: type) -> type:
    """Class decorator: a hook wrapper whose ``__call__`` goes through :func:`run_eager`. The
    first time dynamo traces one, every such class's ``__call__`` is replaced by its
    ``torch.compiler.disable``d version, so that dynamo no longer enters those frames at all
    (no re-trace when the input shapes change); eager-only processes keep the plain call."""
    _HOOK_CLASSES.append(cls)
    return cls


def _disable_hook_classes() -> None:
    while _HOOK_CLASSES:
        cls = _HOOK_CLASSES.pop()
        cls.__call__ = torch.compiler.disable(cls.__call__, reason="gradhealth's hooks run eagerly")


def eager_stance():
    """A context in which compiled code runs eagerly (``torch.compiler.set_stance("force_eager")``;
    a no-op when dynamo is not loaded): the forensic replay's per-module hooks then see every
    module, also inside a compiled submodule."""
    if not dynamo_loaded() or not hasattr(torch.compiler, "set_stance"):
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def _trampoline(fn, args: tuple, kwargs: dict):
    if _HOOK_CLASSES:
        _disable_hook_classes()
    return fn(*args, **kwargs)


def eager_runner():
    """The ``torch.compiler.disable``d trampoline (made on first use; dynamo must be loaded)."""
    if not _EAGER:
        _EAGER.append(torch.compiler.disable(
            _trampoline, reason="gradhealth's hooks run eagerly: they read values back to the host"))
    return _EAGER[0]


def prepare() -> None:
    """Make the trampoline now if dynamo is already loaded, so that a hook dynamo traces later
    finds it made (one skipped call instead of two)."""
    if not _EAGER and dynamo_loaded():
        eager_runner()


def run_eager(fn, args: tuple, kwargs: dict):
    """Call ``fn`` outside any compiled region: directly when no compilation is tracing this
    frame (eager models: one flag test), else through the disabled trampoline."""
    if not torch.compiler.is_compiling():
        return fn(*args, **kwargs)
    # only reached while dynamo traces the hook (once per compiled hook frame, then cached)
    return (_EAGER[0] if _EAGER else eager_runner())(fn, args, kwargs)


def not_collected(host) -> list[str]:
    """The detail-step statistics that need the backward pass of per-layer hooks, for
    ``host``'s model and options (what a compiled model goes without)."""
    lm = host._map
    out = ["gradient norms w.r.t. layer outputs"]
    if any(r == "recurrent" and isinstance(m, nn.RNNBase) for r, m in zip(lm.table.roles, lm.modules)):
        out.append("per-time-step gradients of recurrent layers")
    if not host.config.forward_stats:
        out.append("the forward execution order (forward_stats=False: layers are ordered as declared)")
    return out


def shadow_forward(host, args: tuple, kwargs: dict) -> None:
    """The forward statistics of a compiled model's detail step: the user's module's forward
    run once more, eagerly (``force_eager`` for compiled blocks), without autograd, with the
    per-layer hooks on, from the same RNG state (dropout draws the same masks), and with the RNG
    and the buffers (BatchNorm's running statistics) put back before the compiled forward runs.
    What the hooks measure on it (activation statistics, forward order) is what they would
    measure eagerly; gradients w.r.t. layer outputs need the real backward and stay missing."""
    model = unwrap(host.model)
    saved = host._iter_hooks
    host._iter_hooks = type(saved)()   # a HookSet of its own, emptied before the compiled forward
    try:
        host._inst.install_layer_hooks()
        with preserved(model), torch.no_grad(), eager_stance():
            model.forward(*args, **kwargs)   # (forward, not __call__: the root hooks stay out)
    except Exception as exc:
        host._internal("compiled model's forward statistics", exc)
    finally:
        host._iter_hooks.remove()   # before the compiled forward: dynamo must not meet them
        host._iter_hooks = saved


def install_layer_hooks(host, args: tuple = (), kwargs: dict | None = None) -> None:
    """The detail step's per-layer hooks (``host._inst.install_layer_hooks``), unless ``host``'s
    model runs compiled now: then the forward statistics come from :func:`shadow_forward`
    (``forward_stats``), and one WatchWarning per watcher says what is missing."""
    how = compiled_call(host.model)
    if how is None:
        host._inst.install_layer_hooks()
        return
    if host.config.forward_stats:
        shadow_forward(host, args, kwargs or {})
    if host in _WARNED:
        return
    _WARNED.add(host)
    from .runlog import WatchWarning

    shadow = (" The activation statistics and the forward order come from an eager forward of the "
              "same batch run without autograd on detail steps (same RNG, buffers put back)."
              if host.config.forward_stats else "")
    warnings.warn(
        f"gradhealth: the model runs compiled ({how}); per-layer hooks would break its graph (and "
        "dynamo does not run hooks added after its first call), so on detail steps these are not "
        "collected: " + "; ".join(not_collected(host)) + "." + shadow + " Gradient norms (per layer, "
        "global, before and after clipping), NaN/Inf counts, parameter norms, update ratios, the "
        "guard and the forensic replay work as on an eager model.", WatchWarning, stacklevel=2)
