"""Scalar chains and linear chains: the textbook pictures of vanishing and exploding gradients.

A *scalar chain* has one unit per layer::

    z_l = w_l * a_{l-1} + b_l,    a_l = phi(z_l),    a_0 = x,    y = a_L

and the chain rule makes every derivative a product of local factors::

    dy/dx    = prod_{l=1..L} w_l * phi'(z_l)
    dy/dw_k  = [prod_{l=k+1..L} phi'(z_l) * w_l] * phi'(z_k) * a_{k-1}

so gradients shrink or grow geometrically with depth unless each ``|w_l * phi'(z_l)|`` stays
near 1. This module computes those products exactly (closed-form ``phi'``, no finite
differences), vectorised over a grid of inputs, and shows each factor by name.

Contents, in reading order:

1. :func:`scalar_chain` -> :class:`ChainResult` (curves, slopes, per-layer gradients) and
   :meth:`ChainResult.factors` -> :class:`ChainFactors` (the chain rule, factor by factor);
   :func:`bumps`, the 3-hidden-unit tanh network with many steep slopes.
2. :func:`power_table` and :func:`power_limits`: ``w**L`` and the depth at which it
   underflows or overflows in float16 / bfloat16 / float32 / float64.
3. :func:`deep_linear`: deep linear matrix networks (``W = a*I`` or Gaussian), activation and
   backprop norms per layer, measured against the exact prediction.
   (2. and 3. live in the private module ``_linear``; every name is importable from here.)
4. :func:`weight_claim`: can a weight of 0.7 explode? (scalar chain: never; matrix: yes.)

NumPy and SciPy only. Overflow is never hidden: it shows up as ``inf`` (or ``nan`` where
``inf * 0`` occurred) together with the depth where it first happened.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy import special

from .._checks import check_int, check_real
from ..errors import ParameterError
from ._linear import (
    FLOAT_LIMITS,
    DeepLinearResult,
    FloatLimits,
    PowerLimits,
    PowerTable,
    crossing_depth,
    deep_linear,
    power_limits,
    power_table,
)
from .activations import Activation, get_activation

__all__ = [
    "ChainResult", "ChainFactors", "Factor", "scalar_chain", "bumps", "slope_bound",
    "FloatLimits", "FLOAT_LIMITS", "PowerTable", "PowerLimits", "power_table", "power_limits",
    "crossing_depth", "DeepLinearResult", "deep_linear", "WeightClaim", "weight_claim",
    "textbook_numbers",
]


#: Caps of :func:`scalar_chain`, checked before anything is allocated: layers (the chain rule
#: of :class:`ChainFactors` is quadratic in depth), grid points, and values per curve array
#: (depth * points; the result holds four such float64 arrays, 320 MB at the cap).
MAX_CHAIN_DEPTH = 10_000
MAX_CHAIN_POINTS = 1_000_000
MAX_CHAIN_VALUES = 10_000_000
#: Cap on the width of :func:`weight_claim`'s matrices (an eigenvalue solve of width x width).
MAX_CLAIM_WIDTH = 1000


def _check_chain_size(depth: int, n: int, owner: str) -> None:
    """ParameterError naming ``depth`` when ``depth * n`` is past :data:`MAX_CHAIN_VALUES`."""
    if depth * n > MAX_CHAIN_VALUES:
        most = max(1, MAX_CHAIN_VALUES // n)
        raise ParameterError("depth", owner, f"at most {most:,} with {n:,} input points (depth * points "
                             f"<= {MAX_CHAIN_VALUES:,})", depth,
                             f"pass depth={most} or smaller, or fewer input points.")


def _as_float_tuple(v) -> tuple:
    return tuple(float(t) for t in np.asarray(v, dtype=float).ravel())


# --------------------------------------------------------------------------------------------
# 1. Scalar chains
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Factor:
    """One factor of a chain-rule product.

    Attributes:
        name: the derivative it is, e.g. ``"da1/dz1"``.
        meaning: what it equals, e.g. ``"sigmoid'(z1)"`` or ``"w2"``.
        value: its value.
    """

    name: str
    meaning: str
    value: float


@dataclass(frozen=True)
class ChainFactors:
    """The chain rule of a scalar chain at one input ``x``, factor by factor.

    For the loss ``J`` with ``dJ/dy`` given (1 means ``J = y``), the gradient of layer ``k``'s
    weight is the product of the factors :meth:`terms` lists, e.g. for ``L = 2, k = 1``
    (the notation of the usual backprop derivation)::

        dJ/dw1 = dJ/dy * dy/dz2 * dz2/da1 * da1/dz1 * dz1/dw1

    Attributes:
        x: the input.
        activation: name of ``phi``.
        weights, biases: ``w_1..w_L``, ``b_1..b_L``.
        z: pre-activations ``z_1..z_L``.
        a: activations ``a_0 = x, a_1, ..., a_L = y``.
        local: ``phi'(z_1)..phi'(z_L)``.
        dJ_dy: the loss gradient fed in at the top.
        grad_w, grad_b: ``dJ/dw_k`` and ``dJ/db_k`` for k = 1..L.
        dy_dx: ``dy/dx``.
    """

    x: float
    activation: str
    weights: tuple
    biases: tuple
    z: tuple
    a: tuple
    local: tuple
    dJ_dy: float
    grad_w: tuple
    grad_b: tuple
    dy_dx: float

    @property
    def depth(self) -> int:
        return len(self.weights)

    def terms(self, layer: int) -> list[Factor]:
        """The factors whose product is ``dJ/dw_layer`` (``layer`` counts from 1)."""
        L = self.depth
        k = check_int(layer, "layer", "ChainFactors.terms", min_value=1, max_value=L)
        phi = self.activation if self.activation != "custom" else "phi"
        out = [Factor("dJ/dy", "loss gradient", self.dJ_dy)]
        for l in range(L, k, -1):
            top = "dy" if l == L else f"da{l}"
            out.append(Factor(f"{top}/dz{l}", f"{phi}'(z{l})", self.local[l - 1]))
            out.append(Factor(f"dz{l}/da{l - 1}", f"w{l}", self.weights[l - 1]))
        top = "dy" if k == L else f"da{k}"
        out.append(Factor(f"{top}/dz{k}", f"{phi}'(z{k})", self.local[k - 1]))
        out.append(Factor(f"dz{k}/dw{k}", "x" if k == 1 else f"a{k - 1}", self.a[k - 1]))
        return out

    def smallest(self, layer: int) -> Factor:
        """The factor of ``dJ/dw_layer`` with the smallest magnitude (the vanishing culprit)."""
        return min(self.terms(layer), key=lambda f: abs(f.value))

    def largest(self, layer: int) -> Factor:
        """The factor of ``dJ/dw_layer`` with the largest magnitude."""
        return max(self.terms(layer), key=lambda f: abs(f.value))

    def formula(self, layer: int) -> str:
        """One line, e.g. ``dJ/dw1 = dJ/dy (1) * dy/dz2 (0.105) * ... = 0.0123``."""
        parts = " * ".join(f"{f.name} ({f.value:.4g})" for f in self.terms(layer))
        return f"dJ/dw{layer} = {parts} = {self.grad_w[layer - 1]:.4g}"

    def to_dict(self, all_terms: bool = False) -> dict:
        """Plain data. The factors of ``dJ/dw1`` are listed in full (every other layer's are a
        tail of them); ``all_terms=True`` lists each layer's (quadratic in depth)."""
        layers = []
        for k in range(1, self.depth + 1):
            terms = self.terms(k)
            row = {"layer": k, "weight": self.weights[k - 1], "bias": self.biases[k - 1],
                   "grad_w": self.grad_w[k - 1], "grad_b": self.grad_b[k - 1],
                   "smallest_factor": vars(min(terms, key=lambda f: abs(f.value))).copy()}
            if all_terms:
                row["factors"] = [vars(f).copy() for f in terms]
            layers.append(row)
        return {"x": self.x, "activation": self.activation, "dJ_dy": self.dJ_dy,
                "dy_dx": self.dy_dx, "z": list(self.z), "a": list(self.a), "local": list(self.local),
                "dJ_dw1_factors": [vars(f).copy() for f in self.terms(1)], "layers": layers}


def _forward(act: Activation, w: np.ndarray, b: np.ndarray, x: np.ndarray):
    """Pre-activations, outputs, local derivatives and slopes for every depth, shape [L, n]."""
    L, n = len(w), x.size
    z, a, d, s = (np.empty((L, n)) for _ in range(4))
    prev, slope = x, np.ones(n)
    # inf and inf*0 are the honest answer past overflow: keep them, without RuntimeWarnings.
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for l in range(L):
            z[l] = w[l] * prev + b[l]
            a[l] = act(z[l])
            d[l] = act.grad(z[l])
            slope = slope * (w[l] * d[l])
            s[l] = slope
            prev = a[l]
    return z, a, d, s


def _first_nonfinite(arr: np.ndarray) -> int | None:
    bad = ~np.isfinite(arr).all(axis=1)
    return int(np.argmax(bad)) + 1 if bad.any() else None


@dataclass(frozen=True, eq=False)
class ChainResult:
    """A scalar chain evaluated on a grid of inputs (every array row is one depth).

    Attributes:
        x: the inputs, shape ``[n]``.
        activation: name of ``phi``.
        weights, biases: ``w_l`` and ``b_l``, shape ``[L]``.
        preacts: ``z_l(x)``, shape ``[L, n]``.
        outputs: ``y_l(x) = a_l(x)``, the output of the first ``l`` layers, shape ``[L, n]``.
        local: ``phi'(z_l(x))``, shape ``[L, n]``.
        slopes: ``dy_l/dx``, shape ``[L, n]``.
        max_slope: ``max_x |dy_l/dx|`` per depth, shape ``[L]`` (``inf`` if it overflowed;
            ``nan`` only if every slope at that depth is ``nan``).
        argmax_x: the input where that maximum is reached, shape ``[L]``.
        output_overflow_depth: first depth with a non-finite output, or None.
        slope_overflow_depth: first depth with a non-finite slope, or None.
    """

    x: np.ndarray
    activation: str
    weights: np.ndarray
    biases: np.ndarray
    preacts: np.ndarray
    outputs: np.ndarray
    local: np.ndarray
    slopes: np.ndarray
    max_slope: np.ndarray
    argmax_x: np.ndarray
    output_overflow_depth: int | None
    slope_overflow_depth: int | None
    act: Activation = field(repr=False)

    @property
    def depth(self) -> int:
        return len(self.weights)

    def param_grads(self, dJ_dy: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """``dJ/dw_k`` and ``dJ/db_k`` of the full depth-L chain at every x, each ``[L, n]``.

        Backpropagation: ``delta = dJ/dy``; for ``k = L..1``: ``dJ/db_k = delta * phi'(z_k)``,
        ``dJ/dw_k = dJ/db_k * a_{k-1}``, then ``delta *= phi'(z_k) * w_k``.
        """
        g = check_real(dJ_dy, "dJ_dy", "ChainResult.param_grads")
        L = self.depth
        dw, db = np.empty_like(self.local), np.empty_like(self.local)
        delta = np.full(self.x.shape, g)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            for k in range(L - 1, -1, -1):
                db[k] = delta * self.local[k]
                dw[k] = db[k] * (self.outputs[k - 1] if k > 0 else self.x)
                delta = delta * (self.local[k] * self.weights[k])
        return dw, db

    def factors(self, at: float = 0.0, dJ_dy: float = 1.0) -> ChainFactors:
        """The chain rule at input ``at``, every factor of every ``dJ/dw_k`` exposed."""
        x0 = check_real(at, "at", "ChainResult.factors")
        one = scalar_chain(self.act, self.weights, bias=self.biases, x=[x0])
        dw, db = one.param_grads(dJ_dy)
        return ChainFactors(
            x=x0, activation=self.activation, weights=_as_float_tuple(self.weights),
            biases=_as_float_tuple(self.biases), z=_as_float_tuple(one.preacts),
            a=(x0,) + _as_float_tuple(one.outputs), local=_as_float_tuple(one.local),
            dJ_dy=float(dJ_dy), grad_w=_as_float_tuple(dw), grad_b=_as_float_tuple(db),
            dy_dx=float(one.slopes[-1, 0]))

    def summary(self) -> list[dict]:
        """One row per depth: max |slope|, where, and the output range."""
        with np.errstate(invalid="ignore"):
            return [{"depth": l + 1, "max_abs_slope": float(self.max_slope[l]),
                     "at_x": float(self.argmax_x[l]),
                     "output_min": float(np.min(self.outputs[l])),
                     "output_max": float(np.max(self.outputs[l]))} for l in range(self.depth)]

    def to_dict(self, arrays: bool = True) -> dict:
        d = {"activation": self.activation, "depth": self.depth,
             "weights": self.weights.tolist(), "biases": self.biases.tolist(),
             "x_min": float(self.x.min()), "x_max": float(self.x.max()), "points": self.x.size,
             "output_overflow_depth": self.output_overflow_depth,
             "slope_overflow_depth": self.slope_overflow_depth, "per_depth": self.summary()}
        if arrays:
            d.update(x=self.x.tolist(), outputs=self.outputs.tolist(), slopes=self.slopes.tolist())
        return d


def _per_layer(value, name: str, depth: int | None) -> np.ndarray | None:
    """A scalar (returned as None) or a length-``depth`` sequence of finite reals."""
    if np.ndim(value) == 0:
        check_real(value, name, "scalar_chain")
        return None
    seq = list(np.asarray(value, dtype=object).ravel())
    for i, v in enumerate(seq):
        check_real(v, f"{name}[{i}]", "scalar_chain")
    if depth is not None and len(seq) != depth:
        raise ParameterError(name, "scalar_chain", f"a number or a list of length depth={depth}",
                             value, f"pass {depth} values, or leave depth out to use len({name}).")
    if not seq:
        raise ParameterError(name, "scalar_chain", "a non-empty list", value, "pass one value per layer.")
    return np.array(seq, dtype=float)


def scalar_chain(activation: str | Activation | Callable = "tanh",
                 weight: float | Sequence[float] | np.ndarray = 8.0, depth: int | None = None,
                 bias: float | Sequence[float] | np.ndarray = 0.0, *, x=None,
                 x_range: tuple[float, float] = (-1.0, 1.0), points: int = 1001,
                 derivative: Callable | None = None) -> ChainResult:
    """Evaluate ``y_l(x) = phi(w_l * y_{l-1}(x) + b_l)``, ``y_0 = x``, for l = 1..depth.

    Args:
        activation: a name from :func:`~gradhealth.theory.activations.activation_names`, an
            :class:`Activation`, or a callable ``phi`` (then give ``derivative=phi'``).
        weight: one ``w`` shared by all layers, or a list ``[w_1, ..., w_L]``.
        depth: number of layers ``L``; may be left out when ``weight`` or ``bias`` is a list.
            At most :data:`MAX_CHAIN_DEPTH` (10,000), and ``depth * points`` (or
            ``depth * x.size``) at most :data:`MAX_CHAIN_VALUES` (10,000,000).
        bias: one ``b`` shared by all layers, or a list ``[b_1, ..., b_L]``.
        x: inputs (any shape, flattened); default ``points`` evenly spaced over ``x_range``.
        x_range: ``(low, high)`` with ``low < high``, used when ``x`` is None.
        points: grid size (2 to :data:`MAX_CHAIN_POINTS`, 1,000,000), used when ``x`` is None.
        derivative: ``phi'`` for a callable ``activation``.

    Returns:
        :class:`ChainResult`; ``ChainResult.factors(at)`` gives the chain-rule breakdown.

    Example (the classic picture: nested tanh with w = 8)::

        >>> r = scalar_chain("tanh", weight=8, depth=3)
        >>> [round(float(m)) for m in r.max_slope]   # 8, 64, 512: each layer multiplies by 8
        [8, 64, 512]
    """
    owner = "scalar_chain"
    act = get_activation(activation, derivative, owner=owner)
    if depth is not None:
        depth = check_int(depth, "depth", owner, min_value=1, max_value=MAX_CHAIN_DEPTH,
                          fix=f"pass a depth from 1 to {MAX_CHAIN_DEPTH:,}.")
    w_list = _per_layer(weight, "weight", depth)
    b_list = _per_layer(bias, "bias", depth if depth is not None else
                        (len(w_list) if w_list is not None else None))
    if depth is None:
        given = w_list if w_list is not None else b_list
        if given is None:
            raise ParameterError("depth", owner, "an integer >= 1 when weight and bias are numbers",
                                 None, "pass depth=3 (or lists of per-layer weights).")
        depth = check_int(len(given), "depth", owner, max_value=MAX_CHAIN_DEPTH,
                          fix=f"pass at most {MAX_CHAIN_DEPTH:,} per-layer values.")
    # _per_layer returned None: the value is a scalar
    w = w_list if w_list is not None else np.full(depth, float(cast(float, weight)))
    b = b_list if b_list is not None else np.full(depth, float(cast(float, bias)))

    if x is None:
        if len(x_range) != 2:
            raise ParameterError("x_range", owner, "a pair (low, high)", x_range, "pass e.g. (-1, 1).")
        lo = check_real(x_range[0], "x_range[0]", owner)
        hi = check_real(x_range[1], "x_range[1]", owner)
        if not lo < hi:
            raise ParameterError("x_range", owner, "(low, high) with low < high", tuple(x_range),
                                 f"pass x_range=({min(lo, hi)}, {max(lo, hi) if lo != hi else lo + 1}).")
        n = check_int(points, "points", owner, min_value=2, max_value=MAX_CHAIN_POINTS,
                      fix=f"pass points from 2 to {MAX_CHAIN_POINTS:,}, e.g. points=1001.")
        _check_chain_size(depth, n, owner)
        xs = np.linspace(lo, hi, n)
    else:
        xs = np.asarray(x, dtype=float).ravel()
        if xs.size == 0 or not np.isfinite(xs).all():
            raise ParameterError("x", owner, "a non-empty array of finite numbers",
                                 f"array of size {xs.size}", "drop NaN/inf inputs.")
        _check_chain_size(depth, xs.size, owner)

    z, a, d, s = _forward(act, w, b, xs)
    abs_s = np.abs(s)
    masked = np.where(np.isnan(abs_s), -np.inf, abs_s)
    idx = np.argmax(masked, axis=1)
    rows = np.arange(depth)
    max_slope = np.where(np.isnan(abs_s).all(axis=1), np.nan, masked[rows, idx])
    return ChainResult(x=xs, activation=act.name, weights=w, biases=b, preacts=z, outputs=a,
                       local=d, slopes=s, max_slope=max_slope, argmax_x=xs[idx],
                       output_overflow_depth=_first_nonfinite(a),
                       slope_overflow_depth=_first_nonfinite(s), act=act)


def bumps(x, scale: float = 5.0, steep: float = 40.0, shift: float = 5.0):
    """The 3-hidden-unit tanh network with several steep slopes, and its exact derivative.

    ``y = tanh(s*tanh(k*x - c) - s*tanh(k*x) + s*tanh(k*x + c))`` with ``s, k, c = 5, 40, 5``
    (one input, one output, a hidden layer of 3 tanh units). Its hidden sum swings between
    ``-s`` and ``+s`` three times, so ``y`` has three transitions with ``|dy/dx|`` near
    ``s * k = 200``: a bounded function whose slopes are anything but.

    Returns:
        ``(y, dy_dx)``, arrays shaped like ``x``.
    """
    x = np.asarray(x, dtype=float)
    t1, t2, t3 = np.tanh(steep * x - shift), np.tanh(steep * x), np.tanh(steep * x + shift)
    u = scale * (t1 - t2 + t3)
    du = scale * steep * ((1 - t1 ** 2) - (1 - t2 ** 2) + (1 - t3 ** 2))
    y = np.tanh(u)
    return y, (1 - y ** 2) * du


# sup |phi'| over the real line, where it is known in closed form.
_SUP_DERIVATIVE = {"linear": 1.0, "relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "hard_tanh": 1.0,
                   "softplus": 1.0, "erf": 2.0 / math.sqrt(math.pi)}


def slope_bound(activation, weight: float, depth: int) -> float:
    """Upper bound on ``|dy/dx|`` (and on ``|dy/da_0|``) of any scalar chain, any biases, any x.

    ``|dy/dx| = prod |w| * |phi'(z_l)| <= (|w| * sup|phi'|)**L``. For tanh that is
    ``|w|**L``, for sigmoid ``(|w|/4)**L``. ``sup|phi'|`` is exact for linear, relu, tanh,
    sigmoid, hard_tanh, softplus and erf, and is estimated on a fine grid over [-30, 30] for
    any other activation.
    """
    act = get_activation(activation, owner="slope_bound")
    w = check_real(weight, "weight", "slope_bound")
    L = check_int(depth, "depth", "slope_bound", min_value=1)
    if act.name in _SUP_DERIVATIVE:
        sup = _SUP_DERIVATIVE[act.name]
    elif act.name in ("leaky_relu", "elu"):
        sup = max(1.0, abs(act.params.get("alpha", 1.0)))
    else:
        with np.errstate(all="ignore"):
            sup = float(np.nanmax(np.abs(act.grad(np.linspace(-30, 30, 600001)))))
    with np.errstate(over="ignore"):
        return float(np.float64(abs(w) * sup) ** L)


# --------------------------------------------------------------------------------------------
# 4. "Even a weight of 0.7 would explode after enough inputs": checked
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class WeightClaim:
    """Scalar chains vs matrices for one weight value, per depth l = 1..depth.

    Attributes:
        weight, depth, width, seed: the setup.
        tanh_max_slope: measured ``max_x |dy_l/dx|`` of the scalar tanh chain (b = 0, the worst
            case: z stays 0 at x = 0), over x in [-3, 3].
        tanh_bound: ``|w|**l``, which no tanh chain can exceed (``|tanh'| <= 1``).
        sigmoid_max_slope: the same for the sigmoid chain with ``b = -w/2`` (the worst case:
            at the fixed point 1/2, every ``z`` is 0 where ``sigmoid'`` peaks at 1/4).
        sigmoid_bound: ``(|w|/4)**l``.
        matrix_spectral_radius: of the ``width x width`` matrix with every entry ``w``:
            ``|w| * width`` (eigenvector: all ones).
        matrix_gain: ``||W**l u||`` for the unit all-ones vector ``u``: ``(|w| width)**l``.
        gaussian_spectral_radius: of one seeded matrix with entries ``N(0, w**2)``, about
            ``|w| sqrt(width)`` (circular law).
        gaussian_gain: ``||W**l u||`` for that matrix (same W at every step, as in an RNN).
        min_width_all, min_width_gaussian: smallest widths at which the matrix gain exceeds 1
            (``|w| n > 1``; ``|w| sqrt(n) > 1``); None for ``w = 0``.
    """

    weight: float
    depth: int
    width: int
    seed: int
    tanh_max_slope: np.ndarray
    tanh_bound: np.ndarray
    sigmoid_max_slope: np.ndarray
    sigmoid_bound: np.ndarray
    matrix_spectral_radius: float
    matrix_gain: np.ndarray
    gaussian_spectral_radius: float
    gaussian_gain: np.ndarray
    min_width_all: int | None
    min_width_gaussian: int | None

    def verdict(self) -> str:
        """The claim checked, in one paragraph with the numbers."""
        w, L, n = self.weight, self.depth, self.width
        return (f"Scalar chain, w = {w:g}, depth {L}: max |dy/dx| is {self.tanh_max_slope[-1]:.3g} "
                f"for tanh (bound {w:g}^{L} = {self.tanh_bound[-1]:.3g}) and "
                f"{self.sigmoid_max_slope[-1]:.3g} for sigmoid (bound ({w:g}/4)^{L} = "
                f"{self.sigmoid_bound[-1]:.3g}): it can only vanish. A width-{n} matrix with every "
                f"entry {w:g} has spectral radius {self.matrix_spectral_radius:.3g}, so its gain "
                f"after {L} steps is {self.matrix_gain[-1]:.3g}; with N(0, {w:g}^2) entries the "
                f"radius is {self.gaussian_spectral_radius:.3g} and the gain "
                f"{self.gaussian_gain[-1]:.3g}. Explosion needs width: all-{w:g} entries explode "
                f"from width {self.min_width_all}, random ones typically from width "
                f"{self.min_width_gaussian}.")

    def to_dict(self) -> dict:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}
        d["verdict"] = self.verdict()
        return d


def weight_claim(weight: float = 0.7, depth: int = 50, width: int = 8, *, seed: int = 0) -> WeightClaim:
    """Check "a weight of ``weight`` explodes after enough layers/inputs" on chains and matrices.

    A scalar tanh or sigmoid chain has ``|dy/dx| = prod |w tanh'(z_l)| <= |w|**L`` (resp.
    ``(|w|/4)**L``) for any biases and inputs: with ``|w| < 1`` it vanishes. The same holds for
    a scalar RNN ``h_t = tanh(w h_{t-1} + u x_t)``: ``dh_T/dh_0`` is the same product. A
    matrix whose entries are about ``w`` multiplies by its spectral radius instead, which
    grows with the width.
    """
    owner = "weight_claim"
    w = check_real(weight, "weight", owner)
    xs = np.linspace(-3, 3, 601)
    L = check_int(depth, "depth", owner, min_value=1, max_value=MAX_CHAIN_VALUES // xs.size,
                  fix=f"pass a depth from 1 to {MAX_CHAIN_VALUES // xs.size:,}.")
    n = check_int(width, "width", owner, min_value=1, max_value=MAX_CLAIM_WIDTH,
                  fix=f"pass a width from 1 to {MAX_CLAIM_WIDTH:,}.")
    tanh_c = scalar_chain("tanh", w, L, 0.0, x=xs)
    sig_c = scalar_chain("sigmoid", w, L, -w / 2, x=xs)
    ls = np.arange(1, L + 1, dtype=float)
    u = np.full(n, 1 / math.sqrt(n))
    G = np.random.default_rng(seed).standard_normal((n, n)) * abs(w)

    def gains(M):
        out, v = np.empty(L), u
        with np.errstate(over="ignore", invalid="ignore"):
            for l in range(L):
                v = M @ v
                out[l] = np.linalg.norm(v)
        return out

    with np.errstate(over="ignore", under="ignore"):
        tb, sb = np.power(abs(w), ls), np.power(abs(w) / 4, ls)
    return WeightClaim(
        w, L, n, seed, tanh_c.max_slope, tb, sig_c.max_slope, sb,
        matrix_spectral_radius=float(np.max(np.abs(np.linalg.eigvals(np.full((n, n), w))))),
        matrix_gain=gains(np.full((n, n), w)),
        gaussian_spectral_radius=float(np.max(np.abs(np.linalg.eigvals(G)))),
        gaussian_gain=gains(G),
        min_width_all=math.floor(1 / abs(w)) + 1 if w else None,
        min_width_gaussian=math.floor(1 / w ** 2) + 1 if w else None)


# --------------------------------------------------------------------------------------------
# 5. The numbers the usual explanations quote
# --------------------------------------------------------------------------------------------

def textbook_numbers() -> list[dict]:
    """The quoted examples, recomputed: ``expr``, exact ``value``, the ``quoted`` figure."""
    sig5 = float(special.expit(5.0) * (1 - special.expit(5.0)))
    return [
        {"expr": "0.6**3", "value": 0.6 ** 3, "quoted": "0.21",
         "note": "0.216: the quoted 0.21 is truncated, not rounded"},
        {"expr": "0.6**15", "value": 0.6 ** 15, "quoted": "0.00047", "note": "vanishing"},
        {"expr": "1.6**15", "value": 1.6 ** 15, "quoted": "1152.92", "note": "exploding"},
        {"expr": "2.34**20", "value": 2.34 ** 20, "quoted": "(a huge value)",
         "note": "output of a 20-layer one-neuron ReLU net, w = 2.34, x = 1"},
        {"expr": "2.34**19", "value": 2.34 ** 19, "quoted": "-",
         "note": "dy/dw1 of that net at x = 1"},
        {"expr": "sigmoid'(5)", "value": sig5, "quoted": "0.0066",
         "note": "one saturated sigmoid factor in a backprop chain"},
        {"expr": "8**3", "value": 8.0 ** 3, "quoted": "-",
         "note": "max slope of the depth-3 relu/tanh chain with w = 8"},
    ]
