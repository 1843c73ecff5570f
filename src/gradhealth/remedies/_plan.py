"""The planner: which weight layers an initialiser changes, and which activation follows each.

An initialiser that matches its scale to an activation (``he_``, ``xavier_``, ``orthogonal_``,
``critical_``) asks :func:`_plan` for its targets. The activation of a layer is found, in this
order, from:

``argument``      the ``activation=`` argument (applies to every targeted layer)
``override``      an ``overrides={"pattern": "activation"}`` entry (the last match wins)
``rnn``           ``nn.RNN(nonlinearity=...)``; tanh for LSTM/GRU
``detected``      the forward graph (``torch.fx``) or, when the model cannot be traced, the
                  module order: the first activation module or function after the layer,
                  looking through normalisation, dropout, pooling, reshapes and residual adds
``default``       ``default_activation=`` for layers whose activation could not be found

A layer whose activation cannot be found, and for which no default was given, is returned in
the unmatched list with the reason: gradhealth does not guess silently. The output layer
(followed by nothing, or only by a softmax/loss) is matched to ``linear``.

Which torch modules, functions and tensor methods are activations, and the theory name each
is planned with, come from the one vocabulary table, :mod:`gradhealth._vocab`
(``module_activation(m, planner=True)``, ``planner_functions()``, ``planner_methods()``); the
tables below say only what is looked through and what counts as the output.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _vocab
from ..errors import ParameterError

__all__ = ["weight_layers"]

_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)

# The planner's view of gradhealth._vocab (activation -> name of gradhealth.theory.activations).
# Derived, not kept: the modules the planner reads (exact class -> theory name; matching itself
# goes through _vocab.module_activation, subclasses included), the fx call_function targets and
# the fx call_method names. The names stay importable (gradhealth.remedies.init re-exports them).
_ACT_MODULES: dict[type, str] = {cls: act.theory for cls, act in _vocab.module_classes()
                                 if act.theory is not None}
_ACT_FUNCTIONS: dict[Any, str] = _vocab.planner_functions()
_ACT_METHODS: dict[str, str] = _vocab.planner_methods()
# What passes a layer's output on without deciding its scale (looked through).
_PASS_MODULES = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_OUTPUT_MODULES = (nn.Softmax, nn.LogSoftmax, nn.modules.loss._Loss)
_PASS_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.truediv, operator.neg,
    operator.getitem, torch.add, torch.flatten, torch.cat, torch.stack, torch.reshape,
    torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.mean, F.dropout,
    F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d, F.pad, F.interpolate,
}
_OUTPUT_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.cross_entropy,
                     F.nll_loss, F.mse_loss, F.binary_cross_entropy_with_logits, F.l1_loss}
_PASS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                 "unsqueeze", "mean", "add", "add_", "mul", "mul_", "div", "div_", "sub",
                 "__getitem__", "to", "float", "half", "type_as", "expand", "expand_as"}
_IGNORED_METHODS = {"size", "dim", "numel", "shape"}
_OUTPUT_METHODS = {"softmax", "log_softmax"}


@dataclass(frozen=True)
class _Act:
    """An activation with its parameter (the negative slope of leaky_relu)."""

    name: str
    alpha: float | None = None

    def __str__(self) -> str:
        return f"{self.name}({self.alpha:g})" if self.alpha is not None else self.name



def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear, Conv and RNN layer of ``model``, in module order."""
    return [(n or "(root)", m) for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]


def _act_of_module(m: nn.Module) -> _Act | None:
    act = _vocab.module_activation(m, planner=True)
    if act is None:
        return None
    name = act.theory
    if isinstance(m, nn.LeakyReLU):
        return _Act(name, float(m.negative_slope))
    if isinstance(m, nn.PReLU):
        return _Act(name, float(m.weight.detach().float().mean()))
    return _Act(name)


def _classify_module(m: nn.Module) -> tuple[str, Any]:
    a = _act_of_module(m)
    if a is not None:
        return "act", a
    if isinstance(m, _WEIGHT_TYPES):
        return "layer", None
    if isinstance(m, _PASS_MODULES):
        return "pass", None
    if isinstance(m, _OUTPUT_MODULES):
        return "output", type(m).__name__
    return "unknown", type(m).__name__


def _classify_node(node, modules: dict) -> tuple[str, Any]:
    op, target = node.op, node.target
    if op == "output":
        return "output", "model output"
    if op == "call_module":
        kind, what = _classify_module(modules[target])
        return kind, (target if kind == "layer" else what)
    if op == "call_function":
        if target in _ACT_FUNCTIONS:
            name = _ACT_FUNCTIONS[target]
            if name == "leaky_relu":
                slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
                return "act", _Act(name, float(slope) if isinstance(slope, (int, float)) else 0.01)
            return "act", _Act(name)
        if target in _PASS_FUNCTIONS:
            return "pass", None
        if target in _OUTPUT_FUNCTIONS:
            return "output", getattr(target, "__name__", str(target))
        if target is getattr and len(node.args) > 1 and node.args[1] in _IGNORED_METHODS:
            return "ignore", None
        return "unknown", getattr(target, "__name__", str(target))
    if op == "call_method":
        if target in _ACT_METHODS:
            return "act", _Act(_ACT_METHODS[target])
        if target in _PASS_METHODS:
            return "pass", None
        if target in _IGNORED_METHODS:
            return "ignore", None
        if target in _OUTPUT_METHODS:
            return "output", target
        return "unknown", f".{target}()"
    return "unknown", op


def _resolve(terminals: list[tuple[str, Any]], how: str) -> tuple[_Act | None, str]:
    """One activation from what the layer's output reaches first, or None with the reason."""
    if not terminals:
        return None, "its output is not used"
    unknown = [w for k, w in terminals if k == "unknown"]
    if unknown:
        return None, f"its output goes through {unknown[0]} (not a known activation or pass-through op)"
    acts = set()
    for k, w in terminals:
        if k == "act":
            acts.add(w)
        else:  # another weight layer or the output: nothing nonlinear in between
            acts.add(_Act("linear"))
    if len(acts) > 1:
        return None, "its output reaches different activations (" + ", ".join(sorted(map(str, acts))) + ")"
    act = acts.pop()
    if act.name == "linear":
        k, w = terminals[0]
        if k == "output":
            return act, f"{how} (output layer)"
        return act, f"{how} (feeds {w} directly)"
    return act, how


def _detect_fx(model: nn.Module, targets: set[str]) -> dict[str, tuple[_Act | None, str]] | None:
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception:  # dynamic control flow, non-tensor inputs, ...: fall back to module order
        return None
    modules = dict(gm.named_modules())
    out: dict[str, tuple[_Act | None, str]] = {}
    per_target: dict[str, list[tuple[str, Any]]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in targets:
            continue
        terms = per_target.setdefault(node.target, [])
        seen, frontier = set(), list(node.users)
        while frontier and len(seen) < 10_000:
            n = frontier.pop()
            if n in seen:
                continue
            seen.add(n)
            kind, what = _classify_node(n, modules)
            if kind == "pass":
                frontier.extend(n.users)
            elif kind != "ignore":
                terms.append((kind, what))
    for name, terms in per_target.items():
        out[name] = _resolve(terms, "detected")
    return out


def traced_activation(model: nn.Module) -> str | None:
    """The activation that follows most weight layers of ``model``, read from one
    ``torch.fx`` trace, so functional calls (``torch.relu``, ``F.gelu``, ``x.tanh()``) count as
    well as modules; None when the model does not trace or no weight layer is followed by one.
    (What the watcher's prescriptions use when the model has no activation *modules*.)"""
    found = _detect_fx(model, {n for n, _ in weight_layers(model)})
    if not found:
        return None
    acts = [a.name for a, _ in found.values() if a is not None]
    return max(acts, key=acts.count) if acts else None


def _detect_module_order(model: nn.Module, name: str) -> tuple[_Act | None, str]:
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    idx = next((i for i, (n, _) in enumerate(leaves) if n == name), None)
    if idx is None:
        return None, "not a leaf module"
    for n, m in leaves[idx + 1:]:
        kind, what = _classify_module(m)
        if kind == "act":
            return what, "detected (module order; model not traceable)"
        if kind == "pass":
            continue
        if kind == "output":
            return _Act("linear"), "detected (module order: output layer)"
        if kind == "layer":
            return None, (f"no activation module between it and {n!r} in module order, and the model "
                          "could not be traced to see a functional one")
        return None, f"followed by {what} in module order (not a known activation)"
    return _Act("linear"), "detected (last layer in module order: output layer)"


def _rnn_act(m: nn.RNNBase) -> _Act:
    if isinstance(m, nn.RNN):
        return _Act(m.nonlinearity)
    return _Act("tanh")


def _parse_act(value: Any, param: str, owner: str) -> _Act:
    from ..theory.activations import get_activation

    if isinstance(value, _Act):
        return value
    text = value.strip() if isinstance(value, str) else value
    alpha = None
    if isinstance(text, str) and "(" in text and text.endswith(")"):  # "leaky_relu(0.2)"
        text, arg = text[:-1].split("(", 1)
        try:
            alpha = float(arg.split("=")[-1])
        except ValueError:
            raise ParameterError(param, owner, "an activation name such as 'relu' or 'leaky_relu(0.2)'",
                                 value, "write the slope as a number, e.g. 'leaky_relu(0.2)'.") from None
    if text == "relu6":
        text = "relu"
    act = get_activation(text, param=param, owner=owner)
    if act.name == "leaky_relu":
        alpha = 0.01 if alpha is None else alpha
    return _Act(act.name, alpha)


def _patterns(value: str | Sequence[str] | None, param: str, owner: str) -> list[str] | None:
    if value is None:
        return None
    pats = [value] if isinstance(value, str) else list(value)
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise ParameterError(param, owner, "a glob pattern or a list of them (module names)", value,
                             f"pass e.g. {param}='encoder.*'.")
    return pats


@dataclass
class _Target:
    name: str
    module: nn.Module
    act: _Act | None
    source: str


def _plan(model: Any, owner: str, *, activation: Any = None, layers=None, overrides=None,
          default_activation: Any = None, needs_activation: bool = True,
          types: tuple = _WEIGHT_TYPES) -> tuple[list[_Target], list[tuple[str, str]]]:
    """Which layers to change and with which activation; raise on patterns that match nothing."""
    if not isinstance(model, nn.Module):
        raise ParameterError("model", owner, "a torch.nn.Module", type(model).__name__,
                             "pass the model (or a single layer) itself.")
    found = [(n, m) for n, m in weight_layers(model) if isinstance(m, types)]
    if not found:
        kinds = "Linear or Conv" if types != _WEIGHT_TYPES else "Linear, Conv or RNN"
        raise ParameterError("model", owner, f"a module containing {kinds} layers", type(model).__name__,
                             "pass a model with such layers; other layer types (Embedding, attention "
                             "in_proj, ...) are not re-initialised by gradhealth.")
    found = _select(found, layers, owner)
    ov = _parse_overrides(overrides, found, owner)
    forced = _parse_act(activation, "activation", owner) if activation is not None else None
    default = _parse_act(default_activation, "default_activation", owner) \
        if default_activation is not None else None
    if not needs_activation:
        return [_Target(n, m, None, "") for n, m in found], []
    detected: dict[str, tuple[_Act | None, str]] | None = None
    targets, unmatched = [], []
    for n, m in found:
        if forced is None and not isinstance(m, nn.RNNBase) and detected is None \
                and not any(fnmatch.fnmatchcase(n, p) for p, _ in ov):
            detected = _detect_fx(model, {k for k, _ in found}) or {}   # once, when first needed
        t = _choose(model, n, m, forced, ov, detected or {})
        if t.act is not None:
            targets.append(t)
        elif default is not None:
            targets.append(_Target(n, m, default, f"default ({t.source})"))
        else:
            unmatched.append((n, t.source + "; pass overrides={%r: '<activation>'} or default_activation=..." % n))
    return targets, unmatched


def _select(found: list, layers, owner: str) -> list:
    """``found`` restricted to the ``layers`` glob patterns (each must match a weight layer)."""
    pats = _patterns(layers, "layers", owner)
    if pats is None:
        return found
    for p in pats:
        if not any(fnmatch.fnmatchcase(n, p) for n, _ in found):
            raise ParameterError("layers", owner, "glob patterns that match weight-layer names", p,
                                 "choose from: " + ", ".join(n for n, _ in found[:12])
                                 + (" ..." if len(found) > 12 else ""))
    return [(n, m) for n, m in found if any(fnmatch.fnmatchcase(n, p) for p in pats)]


def _parse_overrides(overrides, found: list, owner: str) -> list[tuple[str, _Act]]:
    """``overrides`` as ``[(pattern, activation)]``; each pattern must match a targeted layer."""
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise ParameterError("overrides", owner, "a dict {layer-name pattern: activation}",
                             type(overrides).__name__, "pass e.g. overrides={'head.*': 'linear'}.")
    ov = []
    for p, a in overrides.items():
        if not any(fnmatch.fnmatchcase(n, str(p)) for n, _ in found):
            raise ParameterError("overrides", owner, "patterns that match targeted layer names", p,
                                 "choose from: " + ", ".join(n for n, _ in found[:12]))
        ov.append((str(p), _parse_act(a, "overrides", owner)))
    return ov


def _choose(model, n: str, m, forced, ov, detected: dict) -> _Target:
    """The activation of layer ``n``: the argument, else the last matching override, else an
    RNN's own, else detected (torch.fx trace, then module order); ``act`` None when unknown."""
    if forced is not None:
        return _Target(n, m, forced, "argument")
    hit = next((a for p, a in reversed(ov) if fnmatch.fnmatchcase(n, p)), None)
    if hit is not None:
        return _Target(n, m, hit, "override")
    if isinstance(m, nn.RNNBase):
        return _Target(n, m, _rnn_act(m), "rnn")
    if n == "(root)":  # the model is a single layer: nothing follows it
        return _Target(n, m, _Act("linear"), "single layer (nothing follows it)")
    act, why = detected.get(n) or _detect_module_order(model, n)
    return _Target(n, m, act, why)
