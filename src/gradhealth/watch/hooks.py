"""What the watcher hooks into, and the small device-side reductions its hooks run.

*Layers* are the modules that own parameters directly (``Linear``, ``Conv2d``, ``LayerNorm``,
``LSTM``, a custom module with its own ``nn.Parameter``) plus the parameter-free activation
modules (``ReLU``, ``Tanh``, ...), whose outputs carry the dead-unit and saturation
statistics. Every hook handle the watcher creates lives in one :class:`HookSet`, so removing
the watcher removes all of them.

On a ``torch.compile``d model the layers are those of the user's module (``_orig_mod`` inside
the compiled wrapper: the same names as eagerly), and the module hooks run eagerly even when
called from a compiled region (see :mod:`gradhealth.watch._compile`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._vocab import layer_role, module_activation
from ..detectors.base import LayerTable
from ..stats.tensors import is_dtensor
from ._compile import hook_class, named_modules, prepare, run_eager

__all__ = ["HookSet", "LayerMap", "discover_layers", "module_names", "activation_info", "act_stats", "unit_dim"]


def _inert_hook(*args, **kwargs):
    """What a copied or unpickled model gets in place of a live watcher hook: nothing."""
    return None


def _inert_hook_factory():
    return _inert_hook


@hook_class
class CopyInertHook:
    """Wraps a hook so that copies and pickles of the module get an inert no-op instead.

    Per-iteration hooks are closures over the Watcher: ``copy.deepcopy`` keeps functions by
    reference, so a copy made mid-step would otherwise report into the original's watcher,
    and ``torch.save(model)`` could not pickle them at all.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn
        prepare()

    def __call__(self, *args, **kwargs):
        return run_eager(self._fn, args, kwargs)   # never traced by dynamo

    def __deepcopy__(self, memo):
        return _inert_hook

    def __reduce__(self):
        return (_inert_hook_factory, ())


@hook_class
class WeakMethodHook:
    """A module hook that calls ``getattr(owner, name)`` through a weak reference.

    Users copy watched models all the time (``copy.deepcopy`` for an EMA or a best-so-far
    copy, ``torch.save(model)``). A hook that is a bound method would drag a second, live
    Watcher (with its store's thread and queue) into the copy, or fail to pickle. This hook
    copies and pickles as an inert no-op instead; the original keeps watching.
    """

    __slots__ = ("_ref", "_name")

    def __init__(self, owner, name: str):
        self._ref = weakref.ref(owner)
        self._name = name
        prepare()

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return run_eager(self._call, args, kwargs)   # never traced by dynamo (watch, then compile)
        return self._call(*args, **kwargs)   # eager: without run_eager's frame, on every forward

    def _call(self, *args, **kwargs):
        owner = self._ref()
        return None if owner is None else getattr(owner, self._name)(*args, **kwargs)

    def __deepcopy__(self, memo):
        return _inert_hook

    def __reduce__(self):
        return (_inert_hook_factory, ())


class HookSet:
    """A bag of removable handles (module hooks, tensor hooks, optimizer hooks)."""

    def __init__(self):
        self._handles: list[Any] = []

    def add(self, handle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            h = self._handles.pop()
            try:
                h.remove()
            except Exception:  # a handle whose owner is gone is already removed
                pass

    def __len__(self) -> int:
        return len(self._handles)


# ---------------------------------------------------------------------------------------------
# activation modules and layer roles: gradhealth._vocab (one table for watch, probe and remedies)

def activation_info(mod: nn.Module) -> tuple[str, str] | None:
    """``(activation name in the watcher's spelling, family)`` for a known activation module,
    else None (the table is :data:`gradhealth._vocab.MODULES`)."""
    act = module_activation(mod)
    return None if act is None else (act.watch_name, act.family)


def _role(mod: nn.Module, direct: list[nn.Parameter]) -> str:
    return layer_role(mod, direct)


@dataclass
class LayerMap:
    """The watcher's view of a model: layers, their modules, and which parameter is whose."""

    table: LayerTable
    modules: list[nn.Module]
    index_of_module: dict[int, int]
    params: list[nn.Parameter]                   # every parameter of the model, deduplicated
    param_layer: dict[int, int]                  # id(param) -> layer index
    param_pos: dict[int, int]                    # id(param) -> position in params
    param_names: list[str]
    n_modules: int = 0
    conv: list[bool] = field(default_factory=list)
    # position in params -> layer index (-1: none); read-only int64, built once per structure
    pos_layer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sharded: bool = False   # some parameter is a DTensor (FSDP2): norms need a collective, no replay

    def rows(self) -> list[dict]:
        t = self.table
        return [{"index": i, "name": t.names[i], "type": t.types[i], "n_params": t.n_params[i]}
                for i in range(len(t))]


def module_names(model: nn.Module) -> dict[int, str]:
    """``id(module) -> qualified name`` over ``model``, in the user's names (a compiled wrapper
    has the name of the module it wraps)."""
    return {id(m): n for n, m in named_modules(model, wrappers=True)}


def discover_layers(model: nn.Module, previous: LayerMap | None = None) -> LayerMap:
    """Build the :class:`LayerMap` of ``model`` (of the user's module inside a ``torch.compile``
    wrapper: the names are the eager ones).

    With ``previous`` (the model changed structure), layers that still exist keep their index
    and forward depth, new layers get new indices at the end, and layers that disappeared
    keep their row (they are simply no longer measured).
    """
    names: list[str] = []
    types: list[str] = []
    roles: list[str] = []
    fams: list[str] = []
    acts: list[str] = []
    nparams: list[int] = []
    depth: list[int] = []
    modules: list[nn.Module] = []
    conv: list[bool] = []
    index_of_module: dict[int, int] = {}
    if previous is not None:
        t = previous.table
        names, types, roles = list(t.names), list(t.types), list(t.roles)
        fams, acts, nparams, depth = list(t.families), list(t.activations), list(t.n_params), list(t.depth)
        modules = list(previous.modules)
        conv = list(previous.conv)
        index_of_module = dict(previous.index_of_module)
    n_modules = 0
    counted: set[int] = set()   # a tied parameter counts in its first owner, where its norm goes

    def n_own(direct: list) -> int:
        n = sum(p.numel() for p in direct if id(p) not in counted)
        counted.update(id(p) for p in direct)
        return n

    for name, mod in named_modules(model):
        n_modules += 1
        direct = list(mod.parameters(recurse=False))
        ai = activation_info(mod)
        if not direct and ai is None:
            continue
        if id(mod) in index_of_module and modules[index_of_module[id(mod)]] is mod:
            i = index_of_module[id(mod)]
            nparams[i] = n_own(direct)
            continue
        index_of_module[id(mod)] = len(names)
        names.append(name)
        types.append(type(mod).__name__)
        roles.append(_role(mod, direct))
        fams.append(ai[1] if ai else "")
        acts.append(ai[0] if ai else "")
        nparams.append(n_own(direct))
        depth.append(-1)
        modules.append(mod)
        conv.append(isinstance(mod, nn.modules.conv._ConvNd))
    params: list[nn.Parameter] = []
    param_layer: dict[int, int] = {}
    param_pos: dict[int, int] = {}
    pnames: list[str] = []
    pos_layer: list[int] = []
    for mname, mod in named_modules(model):
        li = index_of_module.get(id(mod))
        for pn, p in mod.named_parameters(recurse=False):
            if id(p) in param_layer:   # shared (tied) parameter: first owner keeps it
                continue
            param_layer[id(p)] = li if li is not None else -1
            pos_layer.append(param_layer[id(p)])
            param_pos[id(p)] = len(params)
            params.append(p)
            pnames.append(f"{mname}.{pn}" if mname else pn)
    table = LayerTable(tuple(names), tuple(types), tuple(roles), tuple(fams), tuple(acts),
                       tuple(depth), tuple(nparams))
    return LayerMap(table, modules, index_of_module, params, param_layer, param_pos, pnames,
                    n_modules, conv, _readonly_int64(pos_layer), sharded=any(is_dtensor(p) for p in params))


def _readonly_int64(values: list[int]) -> np.ndarray:
    a = np.asarray(values, dtype=np.int64)
    a.setflags(write=False)
    return a


def unit_dim(t: torch.Tensor, after_conv: bool) -> int:
    """The dimension that indexes *units*: channels after a convolution, features otherwise."""
    if t.dim() <= 1:
        return 0
    if t.dim() == 2:
        return 1
    return 1 if after_conv else t.dim() - 1


def act_stats(out: torch.Tensor, mod: nn.Module, family: str, act: str, after_conv: bool) -> torch.Tensor:
    """``[std, dead_frac, sat_frac]`` of a layer output, as one float32 tensor on its device.

    The definitions are the probe's (:func:`gradhealth.stats.activation_stats`), so a probe and
    a watched run report the same numbers: ``dead_frac`` is the fraction of units (see
    :func:`unit_dim`) that are exactly 0 for the whole batch (ReLU family only, else NaN);
    ``sat_frac`` the fraction of entries within 1% of a bound of a saturating activation
    (else NaN). No host sync.
    """
    from ..stats import activation_stats

    y = out.detach()
    if y.is_complex() or not y.is_floating_point() or y.numel() == 0:
        return torch.full((3,), math.nan, device=y.device)
    name = act or None
    if name == "hardtanh" and (getattr(mod, "min_val", -1.0), getattr(mod, "max_val", 1.0)) != (-1.0, 1.0):
        st = activation_stats(y, name, unit_dim=unit_dim(y, after_conv), bounds=(mod.min_val, mod.max_val))
    else:
        st = activation_stats(y, name, unit_dim=unit_dim(y, after_conv))
    return torch.stack([st["std"], st["dead_frac"], st["saturated_frac"]]).float()
