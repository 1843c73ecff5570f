"""Activation functions and their exact derivatives, vectorised with NumPy.

This is the one table of nonlinearities shared by the scalar chains
(:mod:`gradhealth.theory.chain`) and mean-field theory (:mod:`gradhealth.theory.meanfield`).
Each derivative is written in closed form (no finite differences); the tests compare every
one against ``torch.autograd``.

Use :func:`get_activation` to turn a name, an :class:`Activation` or a user callable into an
:class:`Activation`. A user callable must come with its derivative, either as the
``derivative=`` argument or as a ``.derivative`` attribute of the callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from ..errors import ParameterError

__all__ = ["Activation", "get_activation", "ACTIVATIONS", "activation_names"]

ArrayFn = Callable[[np.ndarray], np.ndarray]

# SELU constants (Klambauer et al. 2017).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Activation:
    """A pointwise nonlinearity ``phi`` with its derivative ``phi'``.

    Attributes:
        name: canonical name (``"tanh"``, ``"relu"``, ...) or ``"custom"``.
        fn: ``phi``, maps an ndarray to an ndarray of the same shape.
        derivative: ``phi'``, same contract.
        family: ``"relu"`` (piecewise linear with a zero side: dead units are exact zeros),
            ``"saturating"`` (bounded: tanh, sigmoid, erf, hard_tanh), ``"linear"`` or ``"smooth"``.
        params: keyword parameters the activation was built with (e.g. ``{"alpha": 0.01}``).
    """

    name: str
    fn: ArrayFn = field(repr=False)
    derivative: ArrayFn = field(repr=False)
    family: str = "smooth"
    params: dict = field(default_factory=dict)

    def __call__(self, x):
        return self.fn(np.asarray(x, dtype=float))

    def grad(self, x):
        """``phi'(x)``, elementwise."""
        return self.derivative(np.asarray(x, dtype=float))


def _sigmoid(x):
    return special.expit(x)


def _dsigmoid(x):
    s = special.expit(x)
    return s * (1.0 - s)


def _gelu(x):
    return 0.5 * x * (1.0 + special.erf(x / math.sqrt(2.0)))


def _dgelu(x):
    return 0.5 * (1.0 + special.erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _swish(x):
    return x * special.expit(x)


def _dswish(x):
    s = special.expit(x)
    return s + x * s * (1.0 - s)


def _selu(x):
    return _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))


def _dselu(x):
    return _SELU_SCALE * np.where(x > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(x, 0.0)))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _make_leaky_relu(alpha: float) -> Activation:
    return Activation(
        "leaky_relu",
        lambda x: np.where(x > 0, x, alpha * x),
        lambda x: np.where(x > 0, 1.0, alpha),
        family="relu",
        params={"alpha": alpha},
    )


def _make_elu(alpha: float) -> Activation:
    return Activation(
        "elu",
        lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
        lambda x: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0))),
        family="smooth",
        params={"alpha": alpha},
    )


# The derivative of relu / hard_tanh at the kinks is taken as 0 at x == 0 for relu
# (torch's convention: grad of relu at 0 is 0) and 1 only strictly inside (-1, 1) for
# hard_tanh (torch's hardtanh passes no gradient at the endpoints).
ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "linear": lambda: Activation("linear", lambda x: x.copy(), lambda x: np.ones_like(x), "linear"),
    "relu": lambda: Activation("relu", lambda x: np.maximum(x, 0.0),
                               lambda x: (x > 0).astype(float), "relu"),
    "leaky_relu": lambda alpha=0.01: _make_leaky_relu(float(alpha)),
    "elu": lambda alpha=1.0: _make_elu(float(alpha)),
    "tanh": lambda: Activation("tanh", np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, "saturating"),
    "sigmoid": lambda: Activation("sigmoid", _sigmoid, _dsigmoid, "saturating"),
    "erf": lambda: Activation("erf", special.erf,
                              lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x), "saturating"),
    "hard_tanh": lambda: Activation("hard_tanh", lambda x: np.clip(x, -1.0, 1.0),
                                    lambda x: ((x > -1.0) & (x < 1.0)).astype(float), "saturating"),
    "selu": lambda: Activation("selu", _selu, _dselu, "smooth"),
    "gelu": lambda: Activation("gelu", _gelu, _dgelu, "smooth"),
    "swish": lambda: Activation("swish", _swish, _dswish, "smooth"),
    "softplus": lambda: Activation("softplus", _softplus, _sigmoid, "smooth"),
}
_ALIASES = {"identity": "linear", "silu": "swish", "hardtanh": "hard_tanh", "leakyrelu": "leaky_relu",
            "logistic": "sigmoid", "none": "linear"}


def activation_names() -> list[str]:
    """Names accepted by :func:`get_activation` (aliases not included)."""
    return sorted(ACTIVATIONS)


def get_activation(activation: str | Activation | Callable, derivative: Callable | None = None,
                   *, param: str = "activation", owner: str = "get_activation", **params) -> Activation:
    """Resolve ``activation`` into an :class:`Activation`.

    Args:
        activation: a name (see :func:`activation_names`; aliases ``identity``, ``silu``,
            ``hardtanh``, ``logistic`` accepted, case-insensitive), an :class:`Activation`, or a
            callable ``phi(ndarray) -> ndarray``.
        derivative: ``phi'`` for a callable ``activation``; if omitted, the callable's
            ``.derivative`` attribute is used.
        param, owner: names used in error messages (the caller's parameter and function).
        **params: parameters of a named activation, e.g. ``alpha=0.2`` for ``leaky_relu``.

    Raises:
        ParameterError: unknown name, bad parameter, or a callable without a derivative.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower().replace("-", "_")
        key = _ALIASES.get(key.replace("_", ""), _ALIASES.get(key, key))
        if key not in ACTIVATIONS:
            raise ParameterError(param, owner, "one of " + ", ".join(activation_names())
                                 + " or a callable with a derivative", activation,
                                 "use a listed name, e.g. 'tanh', or pass your own function "
                                 "together with derivative=...")
        try:
            return ACTIVATIONS[key](**params)
        except TypeError as exc:
            raise ParameterError(param, owner, f"given only the parameters {key!r} accepts",
                                 params, f"remove the unknown keyword(s) ({exc}).") from None
    if callable(activation):
        d = derivative if derivative is not None else getattr(activation, "derivative", None)
        if d is None or not callable(d):
            raise ParameterError(param, owner, "a named activation or a callable with a derivative",
                                 getattr(activation, "__name__", activation),
                                 "pass derivative=<phi'(x) as a function> alongside the callable, "
                                 "or set fn.derivative = <function>.")
        name = getattr(activation, "__name__", "custom")
        f, g = activation, d

        def fn(x: np.ndarray) -> np.ndarray:
            return np.asarray(f(x), dtype=float)

        def dfn(x: np.ndarray) -> np.ndarray:
            return np.asarray(g(x), dtype=float) * np.ones_like(x)

        return Activation(name if name != "<lambda>" else "custom", fn, dfn, "smooth")
    raise ParameterError(param, owner, "an activation name or a callable", activation,
                         "pass e.g. 'tanh' or a function with derivative=...")
