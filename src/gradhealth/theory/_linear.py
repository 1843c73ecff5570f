"""Linear chains (internal to :mod:`gradhealth.theory.chain`, which re-exports every name).

- :func:`power_table` and :func:`power_limits`: ``w**L`` and the depth at which it underflows
  or overflows in float16 / bfloat16 / float32 / float64 (:data:`FLOAT_LIMITS`);
  :func:`crossing_depth`.
- :func:`deep_linear`: deep linear matrix networks (``W = a*I`` or Gaussian), activation and
  backprop norms per layer, measured against the exact prediction.

No activation is involved (the scalar chains with a nonlinearity stay in ``chain``); NumPy and
SciPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from .._checks import check_int, check_real
from ..errors import ParameterError

__all__ = [
    "FloatLimits", "FLOAT_LIMITS", "PowerTable", "PowerLimits", "power_table", "power_limits",
    "crossing_depth", "DeepLinearResult", "deep_linear",
]


# --------------------------------------------------------------------------------------------
# 2. Linear chains: w**L and the floating-point limits
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FloatLimits:
    """The range of a floating-point format.

    Attributes:
        name: ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``.
        max: largest finite value.
        tiny: smallest positive normal value (below it, precision is lost: subnormals).
        smallest_subnormal: smallest positive value; half of it rounds to 0.
        precision_bits: significand bits including the implicit one (11, 8, 24, 53).
    """

    name: str
    max: float
    tiny: float
    smallest_subnormal: float
    precision_bits: int

    @property
    def log2_overflow(self) -> float:
        """log2 of the smallest value that rounds to inf: ``max + ulp(max)/2 = (2 - 2**-p) * 2**emax``
        (a tie, and ties round to the even neighbour, which is inf)."""
        emax = math.frexp(self.max)[1] - 1
        return emax + 1 + math.log1p(-(2.0 ** -self.precision_bits) / 2) / math.log(2)


def _limits(name: str, dt) -> FloatLimits:
    fi = np.finfo(dt)
    return FloatLimits(name, float(fi.max), float(fi.tiny), float(fi.smallest_subnormal), fi.nmant + 1)


#: Float formats. bfloat16 has float32's exponent range with 8 significand bits; its numbers
#: are written out here because NumPy has no bfloat16 (they match ``torch.finfo``).
FLOAT_LIMITS: dict[str, FloatLimits] = {
    "float16": _limits("float16", np.float16),
    "bfloat16": FloatLimits("bfloat16", (2 - 2.0 ** -7) * 2.0 ** 127, 2.0 ** -126, 2.0 ** -133, 8),
    "float32": _limits("float32", np.float32),
    "float64": _limits("float64", np.float64),
}


def _round_to(value: float, dtype: str) -> float:
    """``value`` rounded (to nearest, ties to even) to ``dtype``, as a Python float."""
    with np.errstate(over="ignore"):
        if dtype != "bfloat16":
            return float(np.array(value, dtype=dtype))
        # bfloat16 = the top 16 bits of a float32; round the low 16 bits to nearest even.
        bits = np.array([value], dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return float(rounded.astype(np.uint32).view(np.float32)[0])


@dataclass(frozen=True, eq=False)
class PowerTable:
    """``w**l`` for ``l = 1..depth`` in float64.

    Attributes:
        weight: ``w``.
        depth: ``L``.
        values: ``w**l`` (``inf`` / ``0`` where float64 overflows / underflows).
        log10_abs: ``l * log10|w|``, finite even where ``values`` is not.
    """

    weight: float
    depth: int
    values: np.ndarray
    log10_abs: np.ndarray

    def to_markdown(self, rows: Sequence[int] | None = None) -> str:
        """A Markdown table of ``l``, ``w**l`` and ``log10|w**l|`` (all rows, or those given)."""
        ls = range(1, self.depth + 1) if rows is None else rows
        lines = [f"| l | {self.weight:g}**l | log10 |", "|---:|---:|---:|"]
        lines += [f"| {l} | {self.values[l - 1]:.6g} | {self.log10_abs[l - 1]:.3f} |" for l in ls]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"weight": self.weight, "depth": self.depth, "values": self.values.tolist(),
                "log10_abs": self.log10_abs.tolist()}


#: The deepest :func:`power_table` (two float64 arrays of this length: 160 MB).
MAX_POWER_DEPTH = 10_000_000
#: Caps of :func:`deep_linear`: layers, width, and float64 values held in all (the Gaussian
#: init keeps ``depth * trials * width**2`` weights, the norms ``2 * (depth+1) * trials * width``).
MAX_LINEAR_DEPTH = 100_000
MAX_LINEAR_WIDTH = 4096
MAX_LINEAR_VALUES = 50_000_000


def power_table(weight: float, depth: int) -> PowerTable:
    """``w**l`` for ``l = 1..depth``, the forward (and backward) gain of a linear chain.

    ``depth`` is at most :data:`MAX_POWER_DEPTH` (10,000,000).

    Examples: ``0.6**3 = 0.216``, ``0.6**15 = 4.70e-4``, ``1.6**15 = 1152.9``,
    ``2.34**20 = 2.43e7``.
    """
    w = check_real(weight, "weight", "power_table")
    L = check_int(depth, "depth", "power_table", min_value=1, max_value=MAX_POWER_DEPTH,
                  fix=f"pass a depth from 1 to {MAX_POWER_DEPTH:,}.")
    ls = np.arange(1, L + 1)
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        values = np.power(w, ls.astype(float))
        log10 = ls * math.log10(abs(w)) if w != 0 else np.full(L, -np.inf)
    return PowerTable(w, L, values, np.asarray(log10, dtype=float))


@dataclass(frozen=True)
class PowerLimits:
    """At which depth ``|w|**L`` leaves the range of a float format.

    Depths are for the exact value ``|w_d|**L`` rounded once to the format, where ``w_d`` is
    ``w`` as the format stores it (``0.6`` is ``0.60009765625`` in float16). None means never.

    Attributes:
        dtype: format name.
        weight: ``w`` as given; ``stored_weight``: ``w_d``.
        subnormal_depth: first L with ``|w_d|**L < tiny``: precision starts to drop.
        zero_depth: first L with ``|w_d|**L <= smallest_subnormal / 2``: rounds to 0.
        overflow_depth: first L with ``|w_d|**L >= max + ulp(max)/2``: rounds to inf.
        repeated_reaches_zero: whether multiplying by ``w_d`` one step at a time (each product
            rounded, as a network does) ever gives 0. For ``1/2 < |w_d| < 1`` it does not: at
            the smallest subnormal ``s``, ``s * |w_d|`` rounds back to ``s``, so the product
            stalls at a few ``s`` instead of reaching zero (unless the hardware flushes
            subnormals to zero).
    """

    dtype: str
    weight: float
    stored_weight: float
    subnormal_depth: int | None
    zero_depth: int | None
    overflow_depth: int | None
    repeated_reaches_zero: bool

    def to_dict(self) -> dict:
        return dict(vars(self))


def power_limits(weight: float, dtype: str = "float32") -> PowerLimits:
    """Depths at which ``w**L`` becomes subnormal, rounds to zero or overflows in ``dtype``.

    Computed with logarithms: ``L * log2|w_d|`` against the log2 of each threshold (see
    :class:`PowerLimits` for the exact thresholds, round-to-nearest-even).
    """
    owner = "power_limits"
    w = check_real(weight, "weight", owner)
    if dtype not in FLOAT_LIMITS:
        raise ParameterError("dtype", owner, "one of " + ", ".join(FLOAT_LIMITS), dtype,
                             "pass dtype='float32' (or another listed format).")
    lim = FLOAT_LIMITS[dtype]
    wd = abs(_round_to(w, dtype))
    sub = zero = over = None
    if wd == 0:
        sub = zero = 1
    elif math.isinf(wd):
        over = 1
    elif wd > 1:
        over = max(1, math.ceil(lim.log2_overflow / math.log2(wd)))
    elif wd < 1:
        lw = math.log2(wd)
        sub = math.floor(math.log2(lim.tiny) / lw) + 1
        zero = max(1, math.ceil((math.log2(lim.smallest_subnormal) - 1) / lw))
    return PowerLimits(dtype, w, _round_to(w, dtype), sub, zero, over,
                       repeated_reaches_zero=bool(wd <= 0.5))


def crossing_depth(weight: float, threshold: float) -> int | None:
    """Smallest depth L with ``|w|**L`` at or past ``threshold`` (None if it never gets there).

    For ``threshold >= 1`` that means ``|w|**L >= threshold`` (growth); for ``threshold < 1``,
    ``|w|**L <= threshold`` (decay). E.g. ``crossing_depth(0.6, 1e-3) == 14`` and
    ``crossing_depth(1.6, 1e3) == 15``.
    """
    w = abs(check_real(weight, "weight", "crossing_depth"))
    t = check_real(threshold, "threshold", "crossing_depth", low=0.0, low_inclusive=False)
    grow = t >= 1
    if w == 0:
        return None if grow else 1
    if (grow and w <= 1 and not (w == 1 and t == 1)) or (not grow and w >= 1):
        return None

    def crossed(L: int) -> bool:
        with np.errstate(over="ignore", under="ignore"):
            v = float(np.float64(w) ** L)
        return v >= t if grow else v <= t

    # the log ratio can land a hair off an integer; settle the neighbours with actual powers
    L = max(1, math.ceil(math.log(t) / math.log(w))) if w != 1 else 1
    while L > 1 and crossed(L - 1):
        L -= 1
    while not crossed(L):
        L += 1
    return L


# --------------------------------------------------------------------------------------------
# 3. Deep linear matrix networks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DeepLinearResult:
    """Norms through a deep linear network ``h_l = W_l h_{l-1}``, measured and predicted.

    The input ``x`` and the top gradient ``g = dJ/dh_L`` (i.e. ``J = g . h_L``) are random unit
    vectors, so every predicted norm starts at 1. Backprop: ``dJ/dh_{l-1} = W_l^T dJ/dh_l`` and
    ``dJ/dW_l = (dJ/dh_l) h_{l-1}^T``.

    Predictions:

    * ``W = a*I``: ``||h_l|| = a**l``, ``||dJ/dh_l|| = a**(L-l)``, ``||dJ/dW_l|| = a**(L-1)``
      for every layer (exact).
    * Gaussian ``W_ij ~ N(0, sigma_w**2/n)``: ``E||h_l||^2 = sigma_w**(2l)`` exactly, at any
      width, because ``||W h||^2 / ||h||^2 ~ (sigma_w**2/n) * chi2_n`` whatever ``h`` is,
      independently from layer to layer. ``predicted_*`` holds the root mean square
      ``sqrt(E||.||^2)``. At finite width ``ln||h_l||`` is a sum of ``l`` independent
      ``0.5*ln(sigma_w**2 chi2_n/n)`` terms: mean ``l*(ln sigma_w + (psi(n/2) - ln(n/2))/2)``
      (about ``-l/(2n)`` below ``l ln sigma_w``), standard deviation
      ``0.5*sqrt(l*psi1(n/2))`` (about ``sqrt(l/(2n))``): near log-normal, with a median below
      the mean and a spread that grows like ``sqrt(depth/width)``.

    Attributes:
        init, depth, width, scale, sigma_w, trials, seed: the setup.
        act_norm: ``||h_l||``, shape ``[trials, L+1]`` (column 0 is the input).
        grad_norm: ``||dJ/dh_l||`` (the backprop signal), shape ``[trials, L+1]``.
        weight_grad_norm: ``||dJ/dW_l||_F`` for l = 1..L, shape ``[trials, L]``.
        predicted_act_norm, predicted_grad_norm: shape ``[L+1]``; predicted_weight_grad_norm ``[L]``.
        act_log_mean, act_log_std: predicted mean and std of ``ln||h_l||``, shape ``[L+1]``.
        grad_log_mean, grad_log_std: the same for ``ln||dJ/dh_l||``.
    """

    init: str
    depth: int
    width: int
    scale: float
    sigma_w: float
    trials: int
    seed: int
    act_norm: np.ndarray
    grad_norm: np.ndarray
    weight_grad_norm: np.ndarray
    predicted_act_norm: np.ndarray
    predicted_grad_norm: np.ndarray
    predicted_weight_grad_norm: np.ndarray
    act_log_mean: np.ndarray
    act_log_std: np.ndarray
    grad_log_mean: np.ndarray
    grad_log_std: np.ndarray

    @property
    def overflow_layer(self) -> int | None:
        """First layer whose activation norm is inf or nan in any trial (None if all finite).

        Past overflow a matrix product turns ``inf * 0`` into ``nan``, as a real network does.
        """
        bad = ~np.isfinite(self.act_norm).all(axis=0)
        return int(np.argmax(bad)) if bad.any() else None

    def to_dict(self) -> dict:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}
        d["overflow_layer"] = self.overflow_layer
        return d


def _norm(v: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis that does not overflow before the entries do."""
    m = np.max(np.abs(v), axis=-1)
    with np.errstate(all="ignore"):
        r = m * np.sqrt(np.sum((v / np.where(m > 0, m, 1.0)[..., None]) ** 2, axis=-1))
    return np.where(np.isinf(m), np.inf, r)


def deep_linear(depth: int = 30, width: int = 32, *, init: str = "identity", scale: float = 1.5,
                sigma_w: float = 1.0, trials: int = 1, seed: int = 0) -> DeepLinearResult:
    """Run a deep linear network forward and backward with explicit matrix products.

    Args:
        depth: number of layers ``L`` (at most :data:`MAX_LINEAR_DEPTH`, 100,000).
        width: units per layer ``n`` (at most :data:`MAX_LINEAR_WIDTH`, 4096). The run holds
            ``depth * trials * width**2`` weights with ``init="gaussian"`` and
            ``2 * (depth + 1) * trials * width`` values with either init: at most
            :data:`MAX_LINEAR_VALUES` (50,000,000).
        init: ``"identity"`` (``W_l = scale * I``) or ``"gaussian"`` (entries
            ``N(0, sigma_w**2 / width)``, fresh per layer and per trial).
        scale: ``a`` in ``W = a*I`` (1.5 explodes, 0.5 vanishes).
        sigma_w: weight scale of the Gaussian init (1 is critical for a linear net).
        trials: independent networks (and inputs) to sample.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        :class:`DeepLinearResult` with measured and predicted norms.
    """
    owner = "deep_linear"
    L = check_int(depth, "depth", owner, min_value=1, max_value=MAX_LINEAR_DEPTH,
                  fix=f"pass a depth from 1 to {MAX_LINEAR_DEPTH:,}.")
    n = check_int(width, "width", owner, min_value=1, max_value=MAX_LINEAR_WIDTH,
                  fix=f"pass a width from 1 to {MAX_LINEAR_WIDTH:,}.")
    T = check_int(trials, "trials", owner, min_value=1, max_value=MAX_LINEAR_VALUES,
                  fix="pass trials=1 or a few more.")
    if init not in ("identity", "gaussian"):
        raise ParameterError("init", owner, "'identity' or 'gaussian'", init, "pass init='identity'.")
    held = L * T * n * n if init == "gaussian" else 2 * (L + 1) * T * n
    if held > MAX_LINEAR_VALUES:
        raise ParameterError("depth", owner, f"small enough that the run holds at most {MAX_LINEAR_VALUES:,} "
                             f"values (depth={L}, width={n}, trials={T}, init={init!r} hold {held:,})", L,
                             "pass a smaller depth, width or number of trials.")
    a = check_real(scale, "scale", owner)
    sw = check_real(sigma_w, "sigma_w", owner, low=0.0)
    rng = np.random.default_rng(seed)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    x, g = unit(rng.standard_normal((T, n))), unit(rng.standard_normal((T, n)))
    if init == "identity":
        Ws = [a * np.eye(n)] * L           # one matrix, shared by every layer and trial
    else:
        Ws = [rng.standard_normal((T, n, n)) * (sw / math.sqrt(n)) for _ in range(L)]
    hs, deltas = [x], [g]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for W in Ws:                       # forward: h_l = W_l h_{l-1}
            hs.append(np.einsum("...ij,...j->...i", W, hs[-1]))
        for W in reversed(Ws):             # backward: dJ/dh_{l-1} = W_l^T dJ/dh_l
            deltas.append(np.einsum("...ji,...j->...i", W, deltas[-1]))
        deltas.reverse()
        act = np.stack([_norm(h) for h in hs], axis=1)
        grad = np.stack([_norm(d) for d in deltas], axis=1)
        wgrad = grad[:, 1:] * act[:, :-1]  # ||u v^T||_F = ||u|| ||v||

    ls = np.arange(L + 1, dtype=float)
    up, down = ls, L - ls
    if init == "identity":
        gain, log_step, log_sd = abs(a), (math.log(abs(a)) if a else -np.inf), 0.0
    else:
        gain = sw
        log_step = math.log(sw) + 0.5 * (special.digamma(n / 2) - math.log(n / 2)) if sw else -np.inf
        log_sd = 0.5 * math.sqrt(special.polygamma(1, n / 2))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        pa, pg = np.power(gain, up), np.power(gain, down)
        pw = np.full(L, np.power(gain, L - 1.0))
        am, gm = up * log_step, down * log_step
        asd, gsd = log_sd * np.sqrt(up), log_sd * np.sqrt(down)
    return DeepLinearResult(init, L, n, a, sw, T, seed, act, grad, wgrad, pa, pg, pw, am, asd, gm, gsd)
