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

This module holds the formula-based initialisers. The planner (which layers, which
activation) is :mod:`gradhealth.remedies._plan`, the report :mod:`gradhealth.remedies._summary`,
:func:`lsuv_` :mod:`gradhealth.remedies.lsuv` and :func:`zero_init_residual_`
:mod:`gradhealth.remedies.residual`; every name stays importable from here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_real
from ..errors import ParameterError

# The planner, the summary, LSUV and residual zeroing live in their own modules; the names are
# re-exported here so that ``gradhealth.remedies.init.<name>`` keeps working.
from ._plan import (  # noqa: F401
    _ACT_FUNCTIONS,
    _ACT_METHODS,
    _ACT_MODULES,
    _IGNORED_METHODS,
    _OUTPUT_FUNCTIONS,  # noqa: F401
    _OUTPUT_METHODS,
    _OUTPUT_MODULES,
    _PASS_FUNCTIONS,
    _PASS_METHODS,  # noqa: F401
    _PASS_MODULES,
    _WEIGHT_TYPES,
    _Act,
    _act_of_module,
    _classify_module,  # noqa: F401
    _classify_node,
    _detect_fx,
    _detect_module_order,
    _parse_act,  # noqa: F401
    _patterns,
    _plan,
    _resolve,
    _rnn_act,
    _Target,
    weight_layers,
)
from ._summary import InitSummary, LayerInit, _biases, _std, _weights
from .lsuv import lsuv_
from .residual import _ZERO_TYPES, _residual_branch_ends, zero_init_residual_  # noqa: F401

__all__ = [
    "he_", "xavier_", "lecun_", "orthogonal_", "critical_", "gaussian_", "lsuv_",
    "zero_init_residual_", "InitSummary", "LayerInit", "weight_layers", "activation_gain",
]

# Gains torch.nn.init.calculate_gain defines (the rest are computed from the activation).
_TORCH_GAIN = {"linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"}


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
        layers: glob pattern(s) of module names to re-initialise (default: every Linear,
            Conv and RNN layer). A pattern that matches nothing is an error.
        overrides: ``{pattern: activation}`` for layers whose activation should not be
            detected (the last matching pattern wins).
        default_activation: activation for layers where none could be detected (otherwise
            they are left unchanged and reported in ``summary.unmatched``).

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
        layers: glob pattern(s) of module names to re-initialise (default: every Linear,
            Conv and RNN layer). A pattern that matches nothing is an error.
        overrides: ``{pattern: activation}`` for layers whose activation should not be
            detected (the last matching pattern wins).
        default_activation: activation for layers where none could be detected (otherwise
            they are left unchanged and reported in ``summary.unmatched``).

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
        layers: glob pattern(s) of module names to re-initialise (default: every Linear,
            Conv and RNN layer). A pattern that matches nothing is an error.
        overrides: ``{pattern: activation}`` for layers whose activation should not be
            detected (the last matching pattern wins).
        default_activation: activation for layers where none could be detected (otherwise
            they are left unchanged and reported in ``summary.unmatched``).

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
              distribution: str = "normal", layers: str | Sequence[str] | None = None,
              overrides: Mapping[str, str] | None = None, default_activation: str | None = None) -> InitSummary:
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
        layers: glob pattern(s) of module names to re-initialise (default: every Linear,
            Conv and RNN layer). A pattern that matches nothing is an error.
        overrides: ``{pattern: activation}`` for layers whose activation should not be
            detected (the last matching pattern wins).
        default_activation: activation for layers where none could be detected (otherwise
            they are left unchanged and reported in ``summary.unmatched``).

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
    from ._critical import critical_sigma_w2_or_none

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

