"""Initialisers applied to a whole model, each layer matched to the activation that follows it.

Every function here re-initialises, in place, the weight layers of a model -- ``nn.Linear``,
``nn.Conv1d/2d/3d`` (and transposed), ``nn.RNN/LSTM/GRU`` -- and returns an
:class:`InitSummary` that says, layer by layer, what was changed, to which activation the
scale was matched and how that activation was found:

``argument``      the ``activation=`` argument (applies to every targeted layer)
``override``      an ``overrides={"pattern": "activation"}`` entry
``detected``      the forward graph (``torch.fx``) or, when the model cannot be traced, the
                  module order: the first activation module or function after the layer,
                  looking through normalisation, dropout, pooling, reshapes and residual adds
``rnn``           ``nn.RNN(nonlinearity=...)``; tanh for LSTM/GRU
``default``       ``default_activation=`` for layers whose activation could not be found

A layer whose activation cannot be found, and for which no default was given, is left
unchanged and listed in :attr:`InitSummary.unmatched` with the reason (and a warning is
issued) -- gradhealth does not guess silently. The output layer (followed by nothing, or
only by a softmax/loss) is matched to ``linear``.

Biases are set to 0, except by :func:`critical_` / :func:`gaussian_`, which draw them from
``N(0, sigma_b2)`` (mean-field convention). Recurrent weights are initialised gate by gate
(each ``hidden_size`` block of an LSTM/GRU matrix separately).

Schemes, with ``fan_in``/``fan_out`` as in ``torch.nn.init`` (``in * receptive field``):

=================  =====================================================  ========================
function           weight variance                                        reference
=================  =====================================================  ========================
:func:`he_`        ``gain^2 / fan_in`` (or ``fan_out``)                   He et al. 2015
:func:`xavier_`    ``gain^2 * 2 / (fan_in + fan_out)``                    Glorot & Bengio 2010
:func:`lecun_`     ``1 / fan_in``                                         LeCun et al. 1998
:func:`orthogonal_` ``gain * Q`` with ``Q`` orthogonal                    Saxe et al. 2014
:func:`critical_`  ``sigma_w2* / fan_in``, chi_1 = 1 (edge of chaos)       Poole et al. 2016,
                                                                          Schoenholz et al. 2017
:func:`gaussian_`  ``sigma_w2 / fan_in`` (the mean-field parametrisation)
:func:`lsuv_`      orthogonal, then rescaled to unit output variance       Mishkin & Matas 2016
:func:`zero_init_residual_` last layer of each residual branch set to 0  Goyal et al. 2017,
                                                                          Zhang et al. 2019 (Fixup)
=================  =====================================================  ========================

``gain`` is ``torch.nn.init.calculate_gain(activation)`` where torch defines it (linear and
sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + a^2)), selu 3/4) and otherwise
``1 / sqrt(E[phi(z)^2])``, ``z ~ N(0, 1)`` -- the gain that keeps the second moment of a
unit-variance pre-activation, which is He's derivation and gives sqrt(2) for relu.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_real
from ..errors import ParameterError

__all__ = [
    "he_", "xavier_", "lecun_", "orthogonal_", "critical_", "gaussian_", "lsuv_",
    "zero_init_residual_", "InitSummary", "LayerInit", "weight_layers", "activation_gain",
]

_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)

# Activation modules -> canonical names of gradhealth.theory.activations.
_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "leaky_relu",
    nn.ELU: "elu", nn.SELU: "selu", nn.GELU: "gelu", nn.SiLU: "swish", nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid", nn.Hardtanh: "hard_tanh", nn.Softplus: "softplus",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.relu6: "relu",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.selu: "selu", torch.selu: "selu", F.gelu: "gelu",
    F.silu: "swish", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.hardtanh: "hard_tanh", F.softplus: "softplus",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
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

# Gains torch.nn.init.calculate_gain defines (the rest are computed from the activation).
_TORCH_GAIN = {"linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"}


@dataclass(frozen=True)
class _Act:
    """An activation with its parameter (the negative slope of leaky_relu)."""

    name: str
    alpha: float | None = None

    def __str__(self) -> str:
        return f"{self.name}({self.alpha:g})" if self.alpha is not None else self.name


@dataclass
class LayerInit:
    """What one ``*_`` initialiser did to one layer.

    Attributes:
        layer: qualified module name (``"encoder.0"``).
        module: module class name (``"Linear"``).
        activation: the activation the scale was matched to (``"tanh"``), or ``""`` when the
            scheme does not depend on it.
        source: how that activation was found (see the module docstring).
        scheme: what was drawn, with numbers, e.g. ``"N(0, 1.76/fan_in), fan_in=64"``.
        params: the parameter names that were written.
        std_before, std_after: standard deviation of the (first) weight before and after.
    """

    layer: str
    module: str
    activation: str
    source: str
    scheme: str
    params: list[str]
    std_before: float
    std_after: float


@dataclass
class InitSummary:
    """The report returned by every initialiser: what changed, and what could not be matched.

    Attributes:
        function: the initialiser that produced it (``"critical_"``).
        changed: one :class:`LayerInit` per re-initialised layer, in module order.
        unmatched: ``(layer, reason)`` for every targeted layer left unchanged.
    """

    function: str
    changed: list[LayerInit] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changed)

    def to_dict(self) -> dict:
        return {"function": self.function, "changed": [asdict(c) for c in self.changed],
                "unmatched": [list(u) for u in self.unmatched]}

    def __str__(self) -> str:
        rows = [("layer", "module", "activation", "source", "scheme", "std before -> after")]
        # Consecutive layers treated alike share one row ("2 .. 76 (38 layers)").
        groups: list[list[LayerInit]] = []
        for c in self.changed:
            key = (c.module, c.activation, c.source, c.scheme)
            if groups and (groups[-1][0].module, groups[-1][0].activation, groups[-1][0].source,
                           groups[-1][0].scheme) == key:
                groups[-1].append(c)
            else:
                groups.append([c])
        for grp in groups:
            c = grp[0]
            if len(grp) == 1:
                name, std = c.layer, f"{c.std_before:.4g} -> {c.std_after:.4g}"
            else:
                b = [g.std_before for g in grp]
                a = [g.std_after for g in grp]
                name = f"{c.layer} .. {grp[-1].layer} ({len(grp)} layers)"
                std = f"{min(b):.3g}..{max(b):.3g} -> {min(a):.3g}..{max(a):.3g}"
            rows.append((name, c.module, c.activation or "-", c.source, c.scheme, std))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.function}: {len(self.changed)} layer(s) re-initialised"]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        for name, why in self.unmatched:
            lines.append(f"  not changed: {name}: {why}")
        return "\n".join(lines)

    __repr__ = __str__


# --- finding the layers and their activations -------------------------------------------------
def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear, Conv and RNN layer of ``model``, in module order."""
    return [(n or "(root)", m) for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]


def _act_of_module(m: nn.Module) -> _Act | None:
    for t, name in _ACT_MODULES.items():
        if type(m) is t or isinstance(m, t):
            if isinstance(m, nn.LeakyReLU):
                return _Act(name, float(m.negative_slope))
            if isinstance(m, nn.PReLU):
                return _Act(name, float(m.weight.detach().float().mean()))
            return _Act(name)
    return None


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
    pats = _patterns(layers, "layers", owner)
    if pats is not None:
        for p in pats:
            if not any(fnmatch.fnmatchcase(n, p) for n, _ in found):
                raise ParameterError("layers", owner, "glob patterns that match weight-layer names", p,
                                     "choose from: " + ", ".join(n for n, _ in found[:12])
                                     + (" ..." if len(found) > 12 else ""))
        found = [(n, m) for n, m in found if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    ov: list[tuple[str, _Act]] = []
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ParameterError("overrides", owner, "a dict {layer-name pattern: activation}",
                                 type(overrides).__name__, "pass e.g. overrides={'head.*': 'linear'}.")
        for p, a in overrides.items():
            if not any(fnmatch.fnmatchcase(n, str(p)) for n, _ in found):
                raise ParameterError("overrides", owner, "patterns that match targeted layer names", p,
                                     "choose from: " + ", ".join(n for n, _ in found[:12]))
            ov.append((str(p), _parse_act(a, "overrides", owner)))
    forced = _parse_act(activation, "activation", owner) if activation is not None else None
    default = _parse_act(default_activation, "default_activation", owner) \
        if default_activation is not None else None
    if not needs_activation:
        return [_Target(n, m, None, "") for n, m in found], []
    detected: dict[str, tuple[_Act | None, str]] | None = None
    targets, unmatched = [], []
    for n, m in found:
        if forced is not None:
            targets.append(_Target(n, m, forced, "argument"))
            continue
        hit = next((a for p, a in reversed(ov) if fnmatch.fnmatchcase(n, p)), None)
        if hit is not None:
            targets.append(_Target(n, m, hit, "override"))
            continue
        if isinstance(m, nn.RNNBase):
            targets.append(_Target(n, m, _rnn_act(m), "rnn"))
            continue
        if detected is None:
            detected = _detect_fx(model, {k for k, _ in found}) or {}
        if n == "(root)":  # the model is a single layer: nothing follows it
            act, why = _Act("linear"), "single layer (nothing follows it)"
        else:
            act, why = detected.get(n) or _detect_module_order(model, n)
        if act is not None:
            targets.append(_Target(n, m, act, why))
        elif default is not None:
            targets.append(_Target(n, m, default, f"default ({why})"))
        else:
            unmatched.append((n, why + "; pass overrides={%r: '<activation>'} or default_activation=..." % n))
    return targets, unmatched


# --- gains and fans ---------------------------------------------------------------------------
def _moment_gain(name: str, alpha: float | None) -> float:
    """1 / sqrt(E[phi(z)^2]), z ~ N(0, 1), by Gauss-Hermite quadrature."""
    import numpy as np

    from ..theory.activations import get_activation

    act = get_activation(name, **({"alpha": alpha} if alpha is not None else {}))
    x, w = np.polynomial.hermite_e.hermegauss(101)
    m2 = float(np.sum(w * act(x) ** 2) / math.sqrt(2 * math.pi))
    return 1.0 / math.sqrt(m2)


def activation_gain(activation: Any) -> float:
    """The init gain for ``activation`` (see the module docstring), e.g. ``"relu"`` -> sqrt(2)."""
    a = _parse_act(activation, "activation", "activation_gain")
    if a.name in _TORCH_GAIN:
        return float(nn.init.calculate_gain(a.name, a.alpha))
    return _moment_gain(a.name, a.alpha)


def _fans(w: torch.Tensor) -> tuple[int, int]:
    """fan_in, fan_out of a weight (or one gate block of it), as in torch.nn.init."""
    if w.dim() < 2:
        return w.numel(), w.numel()
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


def _weights(m: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """(param name, tensor, number of gate blocks) for the weights of a layer."""
    if isinstance(m, nn.RNNBase):
        gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
        return [(n, getattr(m, n), 1 if n.startswith("weight_hr") else gates)
                for n in m._flat_weights_names if n.startswith("weight")]
    return [("weight", m.weight, 1)] if getattr(m, "weight", None) is not None else []


def _biases(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if isinstance(m, nn.RNNBase):
        return [(n, getattr(m, n)) for n in m._flat_weights_names if n.startswith("bias")]
    b = getattr(m, "bias", None)
    return [("bias", b)] if isinstance(b, torch.Tensor) else []


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std()) if t.numel() > 1 else float(t.detach().float().abs().sum())


def _draw_(w: torch.Tensor, std: float, distribution: str) -> None:
    if distribution == "normal":
        w.normal_(0.0, std)
    elif distribution == "uniform":
        b = math.sqrt(3.0) * std
        w.uniform_(-b, b)
    else:  # truncated_normal: re-scaled so the *truncated* distribution has variance std^2
        nn.init.trunc_normal_(w, 0.0, std / 0.87962566103423978, -2 * std / 0.87962566103423978,
                              2 * std / 0.87962566103423978)


def _apply(owner: str, targets: list[_Target], unmatched: list, weight_fn: Callable,
           bias_fn: Callable | None = None, describe: Callable | None = None) -> InitSummary:
    """Run ``weight_fn(block, target, param_name)`` on every gate block of every weight; zero
    (or ``bias_fn(bias, target, param_name)``) the biases; build the summary."""
    summary = InitSummary(owner, unmatched=list(unmatched))
    with torch.no_grad():
        for t in targets:
            ws = _weights(t.module)
            if not ws:
                summary.unmatched.append((t.name, "has no weight"))
                continue
            before = _std(ws[0][1])
            names, details = [], []
            for pname, w, gates in ws:
                for block in w.chunk(gates, dim=0):
                    d = weight_fn(block, t, pname)
                if d not in details:
                    details.append(d)
                names.append(pname)
            for pname, b in _biases(t.module):
                if b is None:
                    continue
                if bias_fn is None:
                    b.zero_()
                else:
                    bias_fn(b, t, pname)
                names.append(pname)
            if isinstance(t.module, nn.RNNBase) and hasattr(t.module, "flatten_parameters"):
                t.module.flatten_parameters()
            summary.changed.append(LayerInit(
                t.name, type(t.module).__name__, str(t.act) if t.act is not None else "", t.source,
                "; ".join(details), names, before, _std(ws[0][1])))
    if summary.unmatched:
        warnings.warn(f"{owner}: {len(summary.unmatched)} layer(s) left unchanged: "
                      + "; ".join(f"{n}: {w}" for n, w in summary.unmatched[:3])
                      + (" ..." if len(summary.unmatched) > 3 else ""), UserWarning, stacklevel=3)
    return summary


_COMMON_ARGS = """
        layers: glob pattern(s) of module names to re-initialise (default: every Linear,
            Conv and RNN layer). A pattern that matches nothing is an error.
        overrides: ``{pattern: activation}`` for layers whose activation should not be
            detected (the last matching pattern wins).
        default_activation: activation for layers where none could be detected (otherwise
            they are left unchanged and reported in ``summary.unmatched``)."""


# --- the initialisers -----------------------------------------------------------------------
def he_(model: nn.Module, *, activation: Any = None, mode: str = "fan_in", distribution: str = "normal",
        layers: str | Sequence[str] | None = None, overrides: Mapping[str, str] | None = None,
        default_activation: str | None = None) -> InitSummary:
    """He (Kaiming) initialisation: weight variance ``gain^2 / fan`` (He et al. 2015).

    For ReLU (gain^2 = 2) this is the critical initialisation: chi_1 = 1, so the backward
    signal neither grows nor shrinks with depth. Matches
    ``torch.nn.init.kaiming_normal_(w, mode=mode, nonlinearity=activation)`` layer by layer.

    Args:
        model: the model (or a single layer).
        activation: one activation for every layer (default: detected per layer).
        mode: ``"fan_in"`` (preserves forward variance) or ``"fan_out"`` (backward).
        distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"`` (same variance).
    """ + _COMMON_ARGS + """

    Returns:
        :class:`InitSummary`.
    """
    owner = "he_"
    check_choice(mode, "mode", owner, ["fan_in", "fan_out"])
    check_choice(distribution, "distribution", owner, ["normal", "uniform", "truncated_normal"])
    targets, unmatched = _plan(model, owner, activation=activation, layers=layers, overrides=overrides,
                               default_activation=default_activation)

    def weight(w, t, pname):
        fan = _fans(w)[0 if mode == "fan_in" else 1]
        g = activation_gain(t.act)
        _draw_(w, g / math.sqrt(fan), distribution)
        return f"{distribution} var {g * g:.4g}/{mode}"

    return _apply(owner, targets, unmatched, weight)


def xavier_(model: nn.Module, *, activation: Any = None, distribution: str = "uniform",
            layers: str | Sequence[str] | None = None, overrides: Mapping[str, str] | None = None,
            default_activation: str | None = None) -> InitSummary:
    """Xavier (Glorot) initialisation: variance ``gain^2 * 2 / (fan_in + fan_out)``
    (Glorot & Bengio 2010), a compromise between forward and backward variance.

    Matches ``torch.nn.init.xavier_uniform_(w, gain=calculate_gain(activation))``.

    Args:
        model: the model (or a single layer).
        activation: one activation for every layer (default: detected per layer).
        distribution: ``"uniform"`` (as in the paper), ``"normal"`` or ``"truncated_normal"``.
    """ + _COMMON_ARGS + """

    Returns:
        :class:`InitSummary`.
    """
    owner = "xavier_"
    check_choice(distribution, "distribution", owner, ["uniform", "normal", "truncated_normal"])
    targets, unmatched = _plan(model, owner, activation=activation, layers=layers, overrides=overrides,
                               default_activation=default_activation)

    def weight(w, t, pname):
        fi, fo = _fans(w)
        g = activation_gain(t.act)
        _draw_(w, g * math.sqrt(2.0 / (fi + fo)), distribution)
        return f"{distribution} var {g * g:.4g}*2/(fan_in+fan_out)"

    return _apply(owner, targets, unmatched, weight)


def lecun_(model: nn.Module, *, distribution: str = "normal",
           layers: str | Sequence[str] | None = None) -> InitSummary:
    """LeCun initialisation: variance ``1 / fan_in`` whatever the activation (LeCun et al.
    1998); the right scale for SELU networks and for linear layers.

    Args:
        model: the model (or a single layer).
        distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
        layers: glob pattern(s) of module names to re-initialise (default: all).

    Returns:
        :class:`InitSummary`.
    """
    owner = "lecun_"
    check_choice(distribution, "distribution", owner, ["normal", "uniform", "truncated_normal"])
    targets, unmatched = _plan(model, owner, layers=layers, needs_activation=False)

    def weight(w, t, pname):
        _draw_(w, 1.0 / math.sqrt(_fans(w)[0]), distribution)
        return f"{distribution} var 1/fan_in"

    return _apply(owner, targets, unmatched, weight)


def orthogonal_(model: nn.Module, *, gain: float | None = None, activation: Any = None,
                layers: str | Sequence[str] | None = None, overrides: Mapping[str, str] | None = None,
                default_activation: str | None = None) -> InitSummary:
    """Orthogonal initialisation: ``W = gain * Q`` with ``Q`` (semi-)orthogonal (Saxe et al.
    2014), via ``torch.nn.init.orthogonal_``.

    Every singular value of ``Q`` is 1, so a deep *linear* chain with ``gain=1`` preserves
    gradient norms exactly (dynamical isometry), and an orthogonal recurrent matrix has
    spectral radius 1 -- the cure for vanishing/exploding gradients through time.

    Args:
        model: the model (or a single layer).
        gain: one gain for every layer. ``None`` (default): the gain of each layer's
            activation (detected, or ``activation=``).
        activation: one activation for every layer when ``gain`` is None.
    """ + _COMMON_ARGS + """

    Returns:
        :class:`InitSummary`.
    """
    owner = "orthogonal_"
    if gain is not None:
        gain_value = check_real(gain, "gain", owner, low=0.0, low_inclusive=False,
                                fix="pass a finite gain > 0, e.g. gain=1.0, or gain=None to match the activation.")
        targets, unmatched = _plan(model, owner, layers=layers, needs_activation=False)
    else:
        gain_value = None
        targets, unmatched = _plan(model, owner, activation=activation, layers=layers,
                                   overrides=overrides, default_activation=default_activation)

    def weight(w, t, pname):
        g = gain_value if gain_value is not None else activation_gain(t.act)
        nn.init.orthogonal_(w, gain=g)
        return f"orthogonal, gain {g:.4g}"

    return _apply(owner, targets, unmatched, weight)


def critical_(model: nn.Module, *, activation: Any = None, sigma_b2: float = 0.0, sigma_u2: float = 0.1,
              distribution: str = "normal", layers: str | Sequence[str] | None = None, overrides: Mapping[str, str] | None = None,
              default_activation: str | None = None) -> InitSummary:
    """Initialise at the edge of chaos: ``W ~ N(0, sigma_w2* / fan_in)``, ``b ~ N(0, sigma_b2)``
    with ``sigma_w2*`` the critical weight variance of the layer's activation at ``sigma_b2``
    (Poole et al. 2016; Schoenholz et al. 2017).

    At the critical point the mean-field gradient factor chi_1 = sigma_w2 * E[phi'(h)^2] is
    1: the backward signal neither vanishes nor explodes with depth, and information
    propagates as deep as possible. ``sigma_w2*`` comes from
    :func:`gradhealth.theory.criticality.critical_sigma_w2` (for relu it is 2 -- He init;
    for tanh at sigma_b2 = 0 it is 1).

    Recurrent layers (time is depth): the pre-activation at each step is
    ``W_hh h + W_ih x_t + b``, so the input term acts as an extra bias of variance
    ``sigma_u2`` (``W_ih ~ N(0, sigma_u2 / fan_in)``, for inputs of unit variance). The
    recurrent matrix gets the critical variance at ``sigma_b2 + sigma_u2`` (tanh: 1.99 at
    the default 0.1), and the two bias vectors ``sigma_b2 / 2`` each. A recurrent matrix
    with spectral radius 3 (gradients x1e11 over 100 steps) becomes one whose backward
    signal stays within a factor of a few over 100 steps. LSTM/GRU gate blocks are treated
    with the cell's tanh point (a heuristic: the mean-field theory of gated cells differs).

    Args:
        model: the model (or a single layer).
        activation: one activation for every layer (default: detected per layer).
        sigma_b2: bias variance (>= 0); the critical sigma_w2 grows with it.
        sigma_u2: input-drive variance of recurrent layers (>= 0; unused without them).
        distribution: ``"normal"`` (the mean-field setting) or ``"orthogonal"``: ``W = g Q``
            with the same per-unit variance (``g^2 = sigma_w2* max(1, rows / cols)``) but every
            singular value equal -- dynamical isometry at the critical point (Pennington et
            al. 2017). For recurrent layers it is the better-conditioned choice.
    """ + _COMMON_ARGS + """

    Returns:
        :class:`InitSummary`.

    Raises:
        ParameterError: an activation with no critical point at this ``sigma_b2``.
    """
    owner = "critical_"
    sb2 = check_real(sigma_b2, "sigma_b2", owner, low=0.0, fix="pass sigma_b2=0.0 or a small positive value.")
    su2 = check_real(sigma_u2, "sigma_u2", owner, low=0.0, fix="pass sigma_u2=0.1 (the default) or another value >= 0.")
    check_choice(distribution, "distribution", owner, ["normal", "orthogonal"])
    targets, unmatched = _plan(model, owner, activation=activation, layers=layers, overrides=overrides,
                               default_activation=default_activation)
    from .prescribe import critical_sigma_w2_or_none

    def critical(t: _Target, b2: float) -> float:
        if t.act.name == "leaky_relu":
            return 2.0 / (1.0 + t.act.alpha ** 2)  # chi_1 = sigma_w2 (1 + a^2) / 2, any sigma_b2
        v = critical_sigma_w2_or_none(t.act.name, b2)
        if v is None:
            raise ParameterError("activation", owner, "an activation with a critical point at this sigma_b2",
                                 f"{t.act} (layer {t.name}, sigma_b2={b2:g})",
                                 "use he_/xavier_ for this activation, or a different sigma_b2.")
        return v

    cache: dict[tuple[str, float], float] = {}
    for t in targets:  # resolve every critical point before changing anything
        rec = isinstance(t.module, nn.RNNBase)
        for b2 in ((sb2 + su2,) if rec else (sb2,)):
            cache.setdefault((str(t.act), b2), critical(t, b2))

    def draw(w, s2: float) -> None:
        if distribution == "normal":
            w.normal_(0.0, math.sqrt(s2 / _fans(w)[0]))
        else:
            rows = w.shape[0]
            cols = w.numel() // max(rows, 1)
            nn.init.orthogonal_(w, gain=math.sqrt(s2 * max(1.0, rows / cols)))

    how = "normal" if distribution == "normal" else "orthogonal,"

    def weight(w, t, pname):
        if pname.startswith("weight_ih"):
            draw(w, su2)
            return f"W_ih {how} var {su2:g}/fan_in"
        if pname.startswith("weight_hr"):  # LSTM projection: a linear layer
            draw(w, 1.0)
            return f"W_hr {how} var 1/fan_in"
        if pname.startswith("weight_hh"):
            s2 = cache[(str(t.act), sb2 + su2)]
            draw(w, s2)
            return f"W_hh {how} var {s2:.4g}/fan_in (critical at sigma_b2 + sigma_u2 = {sb2 + su2:g})"
        s2 = cache[(str(t.act), sb2)]
        draw(w, s2)
        return f"{how} var {s2:.4g}/fan_in (critical), sigma_b2 {sb2:g}"

    def bias(b, t, pname):
        # An RNN adds two bias vectors (b_ih + b_hh): each gets half the variance.
        var = sb2 / 2 if isinstance(t.module, nn.RNNBase) else sb2
        b.normal_(0.0, math.sqrt(var)) if var > 0 else b.zero_()

    return _apply(owner, targets, unmatched, weight, bias)


def gaussian_(model: nn.Module, sigma_w2: float, sigma_b2: float = 0.0, *,
              layers: str | Sequence[str] | None = None) -> InitSummary:
    """The mean-field parametrisation: ``W ~ N(0, sigma_w2 / fan_in)``, ``b ~ N(0, sigma_b2)``.

    The variance is given, not matched to an activation: use it to place a model anywhere
    on the phase diagram (``sigma_w2=4`` with tanh is deep in the chaotic phase), or to
    reproduce a textbook case.

    Args:
        model: the model (or a single layer).
        sigma_w2: weight variance times fan_in (finite, > 0).
        sigma_b2: bias variance (>= 0).
        layers: glob pattern(s) of module names (default: all weight layers).

    Returns:
        :class:`InitSummary`.
    """
    owner = "gaussian_"
    sw2 = check_real(sigma_w2, "sigma_w2", owner, low=0.0, low_inclusive=False,
                     fix="pass a finite sigma_w2 > 0, e.g. sigma_w2=1.0.")
    sb2 = check_real(sigma_b2, "sigma_b2", owner, low=0.0, fix="pass sigma_b2=0.0 or larger.")
    targets, unmatched = _plan(model, owner, layers=layers, needs_activation=False)

    def weight(w, t, pname):
        w.normal_(0.0, math.sqrt(sw2 / _fans(w)[0]))
        return f"normal var {sw2:.4g}/fan_in, sigma_b2 {sb2:g}"

    def bias(b, t, pname):
        b.normal_(0.0, math.sqrt(sb2)) if sb2 > 0 else b.zero_()

    return _apply(owner, targets, unmatched, weight, bias)


# --- LSUV ---------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a forward hook to end a forward pass early (internal)."""


def _call(model: nn.Module, inputs: Any):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, Mapping):
        for v in x.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def lsuv_(model: nn.Module, inputs: Any, *, tol: float = 0.1, max_iter: int = 10, init: str = "orthogonal",
          layers: str | Sequence[str] | None = None) -> InitSummary:
    """Layer-sequential unit-variance initialisation (LSUV; Mishkin & Matas 2016, "All you
    need is a good init").

    1. Pre-initialise every Linear/Conv weight orthogonally (``init="orthogonal"``; or keep
       the current weights with ``init="none"``) and zero the biases.
    2. Layer by layer, in forward order: run the batch, measure the variance ``v`` of the
       layer's output, and divide its weight by ``sqrt(v)``; repeat until
       ``|v - 1| < tol`` or ``max_iter`` passes.

    Unlike the formula-based schemes this measures the actual data and architecture, so it
    also corrects for non-Gaussian inputs, normalisation-free residual paths and activations
    without a known gain. Recurrent layers are not rescaled (reported in ``unmatched``).
    The model's train/eval mode is restored afterwards; the passes run in eval mode
    without gradients.

    Args:
        model: the model.
        inputs: one batch: a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        tol: tolerance on the output variance (> 0).
        max_iter: rescaling passes per layer (>= 1).
        init: ``"orthogonal"`` or ``"none"``.
        layers: glob pattern(s) of module names (default: all Linear/Conv layers).

    Returns:
        :class:`InitSummary` (``scheme`` gives the measured variance and passes per layer).

    Raises:
        ParameterError: the batch gives non-finite outputs (bad inputs or an already
            diverged model), or bad arguments.
    """
    owner = "lsuv_"
    tol = check_real(tol, "tol", owner, low=0.0, low_inclusive=False, fix="pass e.g. tol=0.1.")
    max_iter = check_int(max_iter, "max_iter", owner, min_value=1)
    check_choice(init, "init", owner, ["orthogonal", "none"],
                 fix="pass init='orthogonal' (the paper's pre-initialisation) or 'none' (keep the weights).")
    targets, unmatched = _plan(model, owner, layers=layers, needs_activation=False)
    unmatched = list(unmatched)
    rnn = [t for t in targets if isinstance(t.module, nn.RNNBase)]
    unmatched += [(t.name, "lsuv_ does not rescale recurrent layers; use orthogonal_ on them") for t in rnn]
    targets = [t for t in targets if not isinstance(t.module, nn.RNNBase)]
    if not targets:
        raise ParameterError("model", owner, "a module containing Linear or Conv layers", type(model).__name__,
                             "use orthogonal_(model, gain=1.0) for recurrent-only models.")
    was_training = {m: m.training for m in model.modules()}
    summary = InitSummary(owner, unmatched=unmatched)
    try:
        model.eval()
        with torch.no_grad():
            if init == "orthogonal":
                for t in targets:
                    w = t.module.weight
                    if w.dim() >= 2:
                        nn.init.orthogonal_(w)
                    for _, b in _biases(t.module):
                        b.zero_()
            # Forward order (may differ from module order) and a finiteness check of the batch.
            order: list[str] = []
            by_module = {t.module: t.name for t in targets}

            def record(m, i, o):
                if by_module[m] not in order:
                    order.append(by_module[m])

            hooks = [t.module.register_forward_hook(record) for t in targets]
            try:
                out = _call(model, inputs)
            finally:
                for h in hooks:
                    h.remove()
            first = _first_tensor(out)
            if first is not None and first.is_floating_point() and not bool(torch.isfinite(first).all()):
                raise ParameterError("inputs", owner, "a batch on which the model's outputs are finite",
                                     "a batch giving NaN/Inf outputs",
                                     "check the batch for NaN/Inf (torch.isfinite(x).all()), or reset a "
                                     "diverged model before LSUV.")
            named = {t.name: t for t in targets}
            unused = [t.name for t in targets if t.name not in order]
            summary.unmatched += [(n, "not called by the forward pass on this batch") for n in unused]
            for name in order:
                t = named[name]
                before = _std(t.module.weight)
                captured: list[torch.Tensor] = []

                def hook(m, i, o, captured=captured):
                    captured.append(_first_tensor(o))
                    raise _Stop

                h = t.module.register_forward_hook(hook)
                var = float("nan")
                passes = 0
                try:
                    for passes in range(1, max_iter + 1):
                        captured.clear()
                        try:
                            _call(model, inputs)
                        except _Stop:
                            pass
                        o = captured[0].float()
                        var = float(o.var())
                        if not math.isfinite(var):
                            raise ParameterError(
                                "inputs", owner, "a batch on which every layer's output is finite",
                                f"non-finite output variance at layer {name!r}",
                                "check the batch for NaN/Inf, or lower the initial weight scale.")
                        if var == 0.0 or abs(var - 1.0) < tol:
                            break
                        t.module.weight.div_(math.sqrt(var))
                finally:
                    h.remove()
                if var == 0.0:
                    summary.unmatched.append((name, "output variance is 0 on this batch (dead layer); "
                                                    "left as pre-initialised"))
                    continue
                summary.changed.append(LayerInit(
                    name, type(t.module).__name__, "", "measured on the batch",
                    f"{'orthogonal, ' if init == 'orthogonal' else ''}output var {var:.3g} after {passes} pass(es)",
                    ["weight"] + [n for n, _ in _biases(t.module)] * (init == "orthogonal"),
                    before, _std(t.module.weight)))
    finally:
        for m, mode in was_training.items():
            m.train(mode)
    return summary


# --- zero-init of residual branches -------------------------------------------------------------
_ZERO_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm,
               nn.GroupNorm)


def _residual_branch_ends(model: nn.Module) -> tuple[list[str] | None, str, list[tuple[str, str]]]:
    """Names of the modules that end a residual branch (``x + f(x)``), found with torch.fx,
    and ``(node, reason)`` for every branch whose last layer could not be identified."""
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:
        return None, f"the model cannot be traced with torch.fx ({type(exc).__name__})", []
    modules = dict(gm.named_modules())
    ancestors: dict[Any, set] = {}
    for node in gm.graph.nodes:  # topological order
        s = set()
        for a in node.all_input_nodes:
            s.add(a)
            s |= ancestors[a]
        ancestors[node] = s
    ends: list[str] = []
    missed: list[tuple[str, str]] = []
    adds = {operator.add, operator.iadd, torch.add}
    for node in gm.graph.nodes:
        is_add = (node.op == "call_function" and node.target in adds) or \
                 (node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        branch = b if a in ancestors[b] else (a if b in ancestors[a] else None)
        if branch is None:
            continue
        n = branch
        for _ in range(50):  # walk back through activations/dropout to the last parametrised op
            if n.op == "call_module" and isinstance(modules[n.target], _ZERO_TYPES):
                if n.target not in ends:
                    ends.append(n.target)
                break
            # attention: the branch ends in its output projection (attn(q, k, v)[0])
            src = n.args[0] if (n.op == "call_function" and n.target is operator.getitem
                                and n.args and isinstance(n.args[0], torch.fx.Node)) else n
            if src.op == "call_module" and isinstance(modules[src.target], nn.MultiheadAttention):
                end = f"{src.target}.out_proj"
                if end not in ends:
                    ends.append(end)
                break
            kind, _ = _classify_node(n, modules)
            if kind not in ("pass", "act") or not n.all_input_nodes:
                missed.append((n.name, f"the residual branch ends in {n.op} {n.target!s}, not a "
                               "Linear/Conv/norm layer gradhealth can zero; name it with layers=[...]"))
                break
            n = n.all_input_nodes[0]
    return ends, "" if ends else "no x + f(x) residual connection was found in the traced graph", missed


def zero_init_residual_(model: nn.Module, *, layers: str | Sequence[str] | None = None) -> InitSummary:
    """Zero the last layer of every residual branch, so each block starts as the identity.

    With ``x + f(x)`` blocks whose ``f`` ends in zero, a deep residual network starts as a
    shallow one: the forward signal and the gradient pass through the skip paths unchanged,
    whatever the depth (Goyal et al. 2017 zero the last BatchNorm scale; Fixup, Zhang et al.
    2019, and SkipInit, De & Smith 2020, the same idea without normalisation). Where the
    branch ends in a normalisation layer its scale (and shift) is zeroed; otherwise the
    weight and bias of its last Linear/Conv.

    Args:
        model: the model; branches are found by tracing it with ``torch.fx``.
        layers: glob pattern(s) naming the layers to zero instead (use it when the model
            cannot be traced); a pattern that matches nothing is an error.

    Returns:
        :class:`InitSummary`.

    Raises:
        ParameterError: no residual branch found and no ``layers`` given.
    """
    owner = "zero_init_residual_"
    if not isinstance(model, nn.Module):
        raise ParameterError("model", owner, "a torch.nn.Module", type(model).__name__, "pass the model itself.")
    named = {n: m for n, m in model.named_modules() if isinstance(m, _ZERO_TYPES)}
    pats = _patterns(layers, "layers", owner)
    if pats is not None:
        names = []
        for p in pats:
            hit = [n for n in named if fnmatch.fnmatchcase(n, p)]
            if not hit:
                raise ParameterError("layers", owner, "glob patterns matching Linear/Conv/norm layer names", p,
                                     "choose from: " + ", ".join(list(named)[:12]))
            names += [n for n in hit if n not in names]
        source = "layers argument"
    else:
        found, why, missed = _residual_branch_ends(model)
        if not found and missed:
            why = "; ".join(w for _, w in missed[:2])
        if not found:
            raise ParameterError("model", owner, "a model with x + f(x) residual branches (found by torch.fx)",
                                 type(model).__name__, f"{why}; name the last layer of each branch with "
                                 "layers=['blocks.*.fc2'].")
        names, source = found, "end of residual branch"
    summary = InitSummary(owner)
    if pats is None:
        summary.unmatched += missed
    with torch.no_grad():
        for n in names:
            m = named[n]
            before = _std(m.weight) if getattr(m, "weight", None) is not None else 0.0
            written = []
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if isinstance(p, torch.Tensor):
                    p.zero_()
                    written.append(pname)
            summary.changed.append(LayerInit(n, type(m).__name__, "", source, "zeros", written, before, 0.0))
    if summary.unmatched:
        warnings.warn(f"{owner}: {len(summary.unmatched)} residual branch(es) left unchanged: "
                      + "; ".join(f"{n}: {w}" for n, w in summary.unmatched[:3]), UserWarning, stacklevel=2)
    return summary
