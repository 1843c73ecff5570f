"""Mean-field signal propagation through deep random networks.

A fully connected net with weights ``W_ij ~ N(0, sigma_w2 / n)``, biases ``b_i ~ N(0, sigma_b2)``
and nonlinearity ``phi``, in the wide limit (Poole et al. 2016, "Exponential expressivity in
deep neural networks through transient chaos"; Schoenholz et al. 2017, "Deep information
propagation"; Pennington et al. 2017, "Resurrecting the sigmoid"):

* **length map** ``q_l = sigma_w2 / rho * E[phi(sqrt(q_{l-1}) z)^2] + sigma_b2``; its stable fixed
  point is ``q*`` and its slope there ``chi_q``, with depth scale ``xi_q = -1 / ln(chi_q)``.
* **correlation map** ``c_l = (sigma_w2 * E[phi(u1) phi(u2)] + sigma_b2) / q*`` with
  ``u1 = sqrt(q*) z1``, ``u2 = sqrt(q*) (c z1 + sqrt(1 - c^2) z2)``; stable fixed point ``c*``,
  slope there ``chi_c = sigma_w2 * E[phi'(u1) phi'(u2)]``, depth scale ``xi_c = -1 / ln(chi_c)``.
* **gradient growth per layer** ``chi_1 = sigma_w2 / rho * E[phi'(sqrt(q*) z)^2]``: backpropagated
  squared gradient norms are multiplied by ``chi_1`` per layer. ``chi_1 < 1`` is the *ordered*
  phase (gradients vanish, inputs become perfectly correlated, ``c* = 1``), ``chi_1 > 1`` the
  *chaotic* phase (gradients explode, ``c* < 1``); ``chi_1 = 1`` is the edge of chaos, where
  ``xi_c`` diverges. Schoenholz et al. found nets train up to about ``6 xi_c`` layers.
* **dropout** with keep probability ``rho`` (Schoenholz et al. 2017, section 5): the diagonal
  (length) map and ``chi_1`` get ``sigma_w2 / rho``; the off-diagonal (correlation) map does not,
  so ``c* < 1`` and ``xi_c`` stays finite for every ``rho < 1``.

Expectations use closed forms where they exist (``linear``; ``relu`` and ``leaky_relu``: the
arc-cosine kernel of Cho & Saul 2009; ``erf``: the arcsine kernel of Williams 1997) and
segmented Gauss-Legendre quadrature otherwise (see :mod:`gradhealth.theory._quadrature`); the
per-activation :class:`Kernel` objects live in the private module ``_kernels`` (re-exported here).

Degenerate cases, said rather than hidden:

* ``q* = inf``: the length map has no fixed point (relu with ``sigma_w2 > 2 rho``, or
  ``sigma_w2 = 2 rho`` with ``sigma_b2 > 0``; linear with ``sigma_w2 >= rho``; gelu, swish and
  softplus once ``sigma_w2 / rho`` exceeds about 2): pre-activations grow without bound.
  ``chi_1`` is its limit, ``chi_q`` and ``xi_q`` are ``nan`` (nothing to converge to), and
  ``c*``/``chi_c`` come from the ``q -> inf`` limit of the correlation map (for activations that
  grow linearly, without dropout: ``c* = 1``, ``chi_c = 1``, ``xi_c = inf``: correlations approach 1 only polynomially).
* every ``q`` a fixed point (relu at ``sigma_w2 = 2 rho``, linear at ``sigma_w2 = rho``, both
  with ``sigma_b2 = 0``: lengths are preserved exactly): ``q*`` is reported as the starting
  length ``Q0 = 1`` and ``chi_q = 1``, ``xi_q = inf``.
* several stable fixed points (gelu and swish around ``sigma_w2 = 2``): ``q*`` is the one the
  length map reaches from ``Q0 = 1`` (unit-variance pre-activations).
* ``q* = 0`` (``sigma_b2 = 0`` and ``phi(0) = 0`` in the ordered phase): the signal dies out;
  ``c*`` and ``chi_c`` are the ``sigma_b2 -> 0+`` limits.

Example:
    >>> from gradhealth.theory.meanfield import analyze
    >>> r = analyze("tanh", 2.0, 0.05)
    >>> r.phase, round(r.chi_1, 3)
    ('chaotic', 1.048)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_real
from ..errors import ParameterError
from . import _quadrature as quad
from ._kernels import _KERNEL_CACHE as _KERNEL_CACHE  # re-exported: benchmarks/bench_phase.py clears it
from ._kernels import _Q_TABLE, Kernel, kernel_for
from ._kernels import MEHLER_DEGREE as MEHLER_DEGREE  # re-exported (its old home)

__all__ = ["MeanFieldResult", "analyze", "chi_1", "q_star", "length_map", "correlation_map",
           "kernel_for", "PHASES"]

PHASES = ("ordered", "critical", "chaotic")
#: ``|chi_1 - 1| <= CRITICAL_TOL`` is reported as ``"critical"``.
CRITICAL_TOL = 1e-9
#: Where ``q* = inf``, limits ``q -> inf`` are evaluated here.
_Q_INF = 1e30
#: The length the iteration of the length map starts from (unit-variance pre-activations):
#: ``q*`` is the fixed point reached from it.
Q0 = 1.0
_Q0_INDEX = int(np.flatnonzero(_Q_TABLE == Q0)[0])


# --------------------------------------------------------------------------------------------
# Fixed points, vectorised over any number of (sigma_w2, sigma_b2) pairs.
# --------------------------------------------------------------------------------------------

def _solve_q(kern: Kernel, s, sb2, *, polish: int = 2) -> np.ndarray:
    """Fixed point ``q*`` of ``q -> s V(q) + sb2`` (``s = sigma_w2 / rho``) reached from ``Q0``.

    The length map is increasing in ``q``, so iterating it from ``q_0 = Q0 = 1`` moves
    monotonically to the nearest fixed point above ``q_0`` (if ``q_1 > q_0``) or below it.
    For the usual activations there is one stable fixed point and ``q_0`` does not matter; a
    map with several (gelu and swish near ``sigma_w2 = 2``) has its answer picked by ``q_0``.
    ``inf`` where the map grows past ``1e12``; ``Q0`` where every ``q`` is a fixed point.

    Method: ``h(q) = q - s V(q)`` is tabulated once per activation on a log grid (with ``V'``,
    so the interpolation is cubic Hermite); the table cell where ``h`` first crosses ``sb2``
    on the way from ``q_0`` holds the root; Newton on the interpolant, then ``polish`` exact
    Newton steps clamped to the cell.
    """
    s, sb2 = np.broadcast_arrays(np.asarray(s, dtype=float), np.asarray(sb2, dtype=float))
    shape = s.shape
    s, sb2 = s.ravel(), sb2.ravel()
    if kern.homogeneous:
        slope = s * kern.V(1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = sb2 / (1.0 - slope)
        marginal = np.abs(slope - 1.0) <= 4 * np.finfo(float).eps
        q = np.where(slope < 1.0, q, np.inf)
        q = np.where(marginal & (sb2 == 0.0), Q0, q)
        return q.reshape(shape)

    t, vt, dvt = kern.table()
    j0 = _Q0_INDEX
    out = np.full(s.size, np.inf)
    lo_i = np.full(s.size, -1)
    su, inv = np.unique(s, return_inverse=True)
    with np.errstate(all="ignore"):
        h = t[None, :] - su[:, None] * vt[None, :]                 # (U, T)
        dh = 1.0 - su[:, None] * dvt[None, :]
    h = np.where(np.isnan(h), -np.inf, h)
    up_max = np.maximum.accumulate(h[:, j0:], axis=1)              # from q0 upwards
    down_min = np.minimum.accumulate(h[:, j0::-1], axis=1)[:, ::-1]  # from q0 downwards
    for j in range(su.size):
        sel = np.flatnonzero(inv == j)
        b = sb2[sel]
        up = h[j, j0] < b
        # going up: first index >= j0 with h >= b; the root is in the cell below it
        k = np.searchsorted(up_max[j], b[up], side="left") + j0
        lo_i[sel[up]] = np.where(k < t.size, k - 1, -1)
        # going down (or staying): last index <= j0 with h <= b
        lo_i[sel[~up]] = np.searchsorted(down_min[j], b[~up], side="right") - 1
    ok = lo_i >= 0
    stay = ok & (lo_i == j0) & (h[inv, j0] == sb2)
    out[stay] = Q0
    ok &= ~stay & (lo_i < t.size - 1)
    if not np.any(ok):
        return _beyond_table(kern, s, sb2, out, float(t[-1])).reshape(shape)
    i, row, b = lo_i[ok], inv[ok], sb2[ok]
    lo, hi = t[i], t[i + 1]
    h0, h1 = h[row, i] - b, h[row, i + 1] - b
    width = hi - lo
    m0, m1 = dh[row, i] * width, dh[row, i + 1] * width
    # Cubic Hermite interpolant p(x) on x in [0, 1]; Newton from the secant estimate.
    with np.errstate(all="ignore"):
        x = np.clip(np.where(h1 != h0, -h0 / (h1 - h0), 0.5), 0.0, 1.0)
        for _ in range(8):
            x2, x3 = x * x, x * x * x
            p = ((2 * x3 - 3 * x2 + 1) * h0 + (x3 - 2 * x2 + x) * m0
                 + (-2 * x3 + 3 * x2) * h1 + (x3 - x2) * m1)
            dp = ((6 * x2 - 6 * x) * h0 + (3 * x2 - 4 * x + 1) * m0
                  + (-6 * x2 + 6 * x) * h1 + (3 * x2 - 2 * x) * m1)
            x = np.clip(np.where(dp != 0, x - p / dp, x), 0.0, 1.0)
        q = np.where(np.isfinite(x), lo + x * width, 0.5 * (lo + hi))
    zero = (i == 0) & (h0 == 0.0)
    ss = s[ok]
    for _ in range(polish):
        with np.errstate(all="ignore"):
            f = q - ss * kern.V(q) - b
            df = 1.0 - ss * kern.dV(q)
            step = np.where((df != 0) & np.isfinite(f / df), f / df, 0.0)
        q = np.clip(q - step, lo, hi)
    # sigma_b2 = 0 and phi(0) = 0: a root indistinguishable from 0 (the table's first cell, or
    # polished down to the evaluation floor) is the trivial fixed point q* = 0.
    q = np.where(zero | ((b == 0.0) & (q < 1e-150)), 0.0, q)
    out[ok] = q
    return _beyond_table(kern, s, sb2, out, float(t[-1])).reshape(shape)


def _beyond_table(kern: Kernel, s: np.ndarray, sb2: np.ndarray, out: np.ndarray, top: float) -> np.ndarray:
    """``out`` with the fixed points above the table's last length ``top`` found: a bounded
    activation (tanh at ``sigma_w2 = 1e16``) has its ``q*`` near ``sigma_w2 sup phi^2``,
    beyond any table, and is not ``inf``. The length map is iterated from ``top`` (where the
    way up from ``Q0`` left the table); lengths that keep growing stay ``inf``."""
    far = np.flatnonzero(np.isinf(out) & np.isfinite(s) & np.isfinite(sb2))
    if not far.size:
        return out
    q = np.full(far.size, top)
    live = np.ones(far.size, dtype=bool)   # still iterating
    found = np.zeros(far.size, dtype=bool)
    with np.errstate(all="ignore"):
        for k in range(60):
            idx = np.flatnonzero(live)
            if not idx.size:
                break
            nxt = s[far[idx]] * kern.V(q[idx]) + sb2[far[idx]]
            conv = np.isfinite(nxt) & (np.abs(nxt - q[idx]) <= 1e-13 * np.abs(nxt))
            # a bounded map converges within a few steps of its jump from ``top``; one still
            # growing after that (or overflowing) diverges
            grow = ~np.isfinite(nxt) | ((k >= 8) & (nxt > q[idx] * (1 + 1e-9)))
            q[idx] = nxt
            found[idx[conv]] = True
            live[idx[conv | grow]] = False
    out[far] = np.where(found, q, np.inf)
    return out


def _c_map_funcs(kern: Kernel, q, sw2, rho):
    """``fdf(c, sel) -> (f, f')``: the correlation map at the fixed length ``q`` and its slope.

    ``sel`` is an index array into the points. Uses
    ``sigma_b2 = q* - sigma_w2 / rho V(q*)`` to write ``f(c) = 1 + sigma_w2 (C(q*, c) -
    V(q*) / rho) / q*``, which stays finite in the ``q* -> 0`` limit. Where ``q* = inf`` the map
    is the ``q -> inf`` limit ``rho C(q, c) / V(q)``; ``q* = 0`` is evaluated at ``Q_FLOOR``.
    """
    q = np.atleast_1d(np.asarray(q, dtype=float))
    sw2 = np.broadcast_to(np.asarray(sw2, dtype=float), q.shape)
    inf = np.isinf(q)
    qe = np.where(inf, _Q_INF, np.maximum(q, quad.Q_FLOOR))
    with np.errstate(all="ignore"):
        vq = kern.V(qe)

    def fdf(c, sel):
        with np.errstate(all="ignore"):
            cc, cd = kern.C(qe[sel], c), kern.Cd(qe[sel], c)
            f = np.where(inf[sel], rho * cc / vq[sel], 1.0 + sw2[sel] * (cc - vq[sel] / rho) / qe[sel])
            df = np.where(inf[sel], rho * qe[sel] * cd / vq[sel], sw2[sel] * cd)
        return f, df

    return fdf


def _solve_c(fdf, n: int, *, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Stable fixed point ``c*`` of the correlation map and the slope there, over ``n`` points.

    ``f`` has nonnegative Mehler coefficients, so ``g(c) = f(c) - c`` is convex on ``[0, 1]``
    with ``g(0) >= 0``, and ``g > 0`` on ``[-1, 0)``: Newton from ``c = 0`` climbs monotonically
    to the smallest root in ``[0, 1]``, the stable one (callers handle ``c* = 1`` themselves).
    """
    c = np.zeros(n)
    slope = np.zeros(n)
    work = np.arange(n)            # points still iterated (shrunk only now and then: cheaper)
    for _ in range(max_iter):
        if work.size == 0:
            break
        cw = c[work]
        f, df = fdf(cw, work)
        slope[work] = df
        g, dg = f - cw, df - 1.0
        with np.errstate(all="ignore"):
            step = np.where(dg < 0, -g / dg, 0.0)
        new = np.clip(cw + np.maximum(np.nan_to_num(step), 0.0), 0.0, 1.0)
        c[work] = new
        done = (new - cw <= 4e-16 * np.maximum(new, 1e-300)) | (g <= 0)
        if done.all():
            break
        if done.sum() * 2 >= work.size:
            work = work[~done]
    # the slope at the final c (one more evaluation where c moved on the last step)
    return c, slope


def _depth(chi) -> np.ndarray:
    """``xi = -1 / ln|chi|``: layers over which a deviation shrinks by ``e``; ``inf`` at ``chi >= 1``."""
    chi = np.asarray(chi, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = -1.0 / np.log(np.abs(chi))
    # within 1e-13 of 1 the depth (> 1e13 layers) is rounding noise: call it infinite
    xi = np.where(np.abs(chi) >= 1.0 - 1e-13, np.inf, xi)
    return np.where(np.isnan(chi), np.nan, np.where(chi == 0.0, 0.0, xi))


def _phase(chi1) -> np.ndarray:
    chi1 = np.asarray(chi1, dtype=float)
    return np.where(np.abs(chi1 - 1.0) <= CRITICAL_TOL, "critical",
                    np.where(chi1 < 1.0, "ordered", "chaotic"))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeanFieldResult:
    """Mean-field quantities of one initialisation (see the module doc for the formulas).

    Attributes:
        q_star: fixed point of the length map (``inf``: no fixed point, lengths grow without
            bound), reached from the length ``Q0 = 1``.
        chi_1: growth factor of squared gradient norms per layer (``> 1`` exploding).
        c_star: fixed point of the correlation map (1 in the ordered phase without dropout).
        chi_c: slope of the correlation map at ``c_star``.
        xi_q: depth scale of the length map, ``-1 / ln(chi_q)`` (``nan`` if ``q_star = inf``).
        xi_c: depth scale of correlations, ``-1 / ln(chi_c)``; ``inf`` at criticality.
        phase: ``"ordered"`` (``chi_1 < 1``), ``"critical"`` (``|chi_1 - 1| <= 1e-9``) or
            ``"chaotic"`` (``chi_1 > 1``; for relu-like activations this means exploding
            gradients, since their correlations never become chaotic: ``c* = 1`` still).
        trainable_depth: ``6 xi_c``, the depth up to which Schoenholz et al. 2017 could train.
            It measures how far correlation information travels; gradient norms still change
            by ``chi_1`` per layer (relu with ``sigma_w2 > 2`` has ``xi_c = inf`` but gradients
            grow ``chi_1^L``).
        chi_q: slope of the length map at ``q_star``.
        activation, sigma_w2, sigma_b2, dropout_keep: the inputs.
        method: ``"closed form"`` or ``"quadrature"``.
    """

    q_star: float
    chi_1: float
    c_star: float
    chi_c: float
    xi_q: float
    xi_c: float
    phase: str
    trainable_depth: float
    chi_q: float = field(default=math.nan, compare=False)
    activation: str = field(default="", compare=False)
    sigma_w2: float = field(default=math.nan, compare=False)
    sigma_b2: float = field(default=math.nan, compare=False)
    dropout_keep: float = field(default=1.0, compare=False)
    method: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        """The JSON-facing summary: ``q_star, chi_1, c_star, chi_c, xi_q, xi_c, phase,
        trainable_depth`` (pass through :func:`gradhealth.events.jsonable` for inf/nan)."""
        return {"q_star": self.q_star, "chi_1": self.chi_1, "c_star": self.c_star,
                "chi_c": self.chi_c, "xi_q": self.xi_q, "xi_c": self.xi_c, "phase": self.phase,
                "trainable_depth": self.trainable_depth}

    def interpretation(self) -> str:
        """One line in words, e.g. ``chi_1 = 1.16 > 1: chaotic - gradients grow ~1.16x ...``."""
        return interpret(self)


def _check_inputs(sigma_w2, sigma_b2, dropout_keep, owner):
    sw2 = check_real(sigma_w2, "sigma_w2", owner, low=0.0,
                     fix="pass the weight variance times fan-in, e.g. sigma_w2=1.0 (LeCun) or "
                         "2.0 (He).")
    sb2 = check_real(sigma_b2, "sigma_b2", owner, low=0.0, fix="pass a bias variance >= 0, e.g. 0.0.")
    rho = check_real(dropout_keep, "dropout_keep", owner, low=0.0, high=1.0, low_inclusive=False,
                     fix="pass the probability of keeping a unit, e.g. 0.9; 1.0 means no dropout.")
    return sw2, sb2, rho


def _analyze_arrays(kern: Kernel, sw2, sb2, rho, *, fast: bool = False):
    """Everything, vectorised over broadcast ``sw2``, ``sb2`` (``rho`` a scalar).

    ``fast`` (the phase diagram): for quadrature kernels, ``q*`` comes from the length-map
    table without exact polishing, ``D`` and ``V'`` at ``q*`` from cubic splines through the
    table, and the correlation map from the Mehler series (:func:`_mehler_funcs`), so no
    activation is evaluated per grid point. Otherwise everything is exact quadrature.
    """
    sw2, sb2 = np.broadcast_arrays(np.asarray(sw2, dtype=float), np.asarray(sb2, dtype=float))
    shape = sw2.shape
    sw2, sb2 = sw2.ravel(), sb2.ravel()
    fast = fast and kern.method == "quadrature" and not kern.homogeneous
    s = sw2 / rho
    q = _solve_q(kern, s, sb2, polish=0 if fast else 2).ravel()
    inf = np.isinf(q)
    qe = np.where(inf, _Q_INF, q)
    with np.errstate(all="ignore"):
        if fast:
            _, dvq, dq = kern.interp(qe)
        else:
            dvq, dq = kern.dV(qe), kern.D(qe)
        chi1 = s * dq
        chiq = np.where(inf, np.nan, s * dvq)
        # Slope of the c-map at c = 1: chi_1 for finite q* (no dropout); the q -> inf limit
        # q D / V otherwise, which is 1 for activations that grow linearly (to O(q^-1/2)).
        slope1 = chi1.copy()
        if inf.any():
            lim = _Q_INF * float(kern.D(_Q_INF)) / float(kern.V(_Q_INF))
            slope1[inf] = 1.0 if abs(lim - 1.0) < 1e-6 else lim
    at_one = (rho == 1.0) & (slope1 <= 1.0 + CRITICAL_TOL)
    c = np.ones(q.size)
    chic = slope1.copy()
    tail = np.zeros(q.size)          # Mehler truncation (fast path), relative to V(q*)
    # q* = inf: the limiting map rho C / V does not depend on sigma_w2, so solve it once
    ri = np.flatnonzero(~at_one & inf)
    if ri.size:
        c1, sl = _solve_c(_c_map_funcs(kern, np.array([np.inf]), np.array([1.0]), rho), 1)
        c[ri], chic[ri] = c1[0], sl[0]
    rf = np.flatnonzero(~at_one & ~inf)
    if rf.size:
        fdf = (_mehler_funcs(kern, q[rf], sw2[rf], rho) if fast
               else _c_map_funcs(kern, q[rf], sw2[rf], rho))
        c[rf], chic[rf] = _solve_c(fdf, rf.size)
        if fast:
            tail[rf] = fdf.tail
    out = dict(q_star=q, chi_1=chi1, c_star=c, chi_c=chic, xi_q=_depth(chiq), xi_c=_depth(chic),
               chi_q=chiq, mehler_tail=tail)
    return {k: v.reshape(shape) for k, v in out.items()}


def analyze(activation, sigma_w2: float, sigma_b2: float, *, dropout_keep: float = 1.0,
            method: str = "auto") -> MeanFieldResult:
    """Mean-field fixed points, growth rates and depth scales of one initialisation.

    Args:
        activation: ``"tanh"``, ``"relu"``, ``"erf"``, ``"sigmoid"``, ``"linear"``,
            ``"hard_tanh"``, ``"selu"``, ``"gelu"``, ``"swish"``/``"silu"``, ... or a callable
            with a derivative (see :func:`gradhealth.theory.activations.get_activation`).
        sigma_w2: weight variance times fan-in (``W ~ N(0, sigma_w2 / n)``): 1 is LeCun/Xavier,
            2 is He.
        sigma_b2: bias variance.
        dropout_keep: keep probability ``rho`` of dropout before each layer (1: none).
        method: ``"auto"`` (closed forms where known) or ``"quadrature"``.

    Returns:
        A :class:`MeanFieldResult`.

    Raises:
        ParameterError: unknown activation, negative or non-finite variance, ``dropout_keep``
            outside ``(0, 1]``, or an activation whose expectations are not finite.
    """
    sw2, sb2, rho = _check_inputs(sigma_w2, sigma_b2, dropout_keep, "analyze")
    kern = kernel_for(activation, method=method, owner="analyze")
    r = {k: float(v) for k, v in _analyze_arrays(kern, sw2, sb2, rho).items()}
    if not math.isfinite(r["chi_1"]):
        raise ParameterError("activation", "analyze", "a function whose Gaussian moments "
                             "E[phi(u)^2], E[phi'(u)^2] are finite", kern.name,
                             "check the function and its derivative return finite values.")
    phase = str(_phase(r["chi_1"]))
    return MeanFieldResult(q_star=r["q_star"], chi_1=r["chi_1"], c_star=r["c_star"],
                           chi_c=r["chi_c"], xi_q=r["xi_q"], xi_c=r["xi_c"], phase=phase,
                           trainable_depth=6.0 * r["xi_c"], chi_q=r["chi_q"], activation=kern.name,
                           sigma_w2=sw2, sigma_b2=sb2, dropout_keep=rho, method=kern.method)


def chi_1(activation, sigma_w2: float, sigma_b2: float, *, dropout_keep: float = 1.0) -> float:
    """``chi_1 = sigma_w2 / rho * E[phi'(sqrt(q*) z)^2]``: squared-gradient growth per layer.

    For relu it is ``sigma_w2 / (2 rho)`` whatever ``q*``; for linear ``sigma_w2 / rho``.
    """
    sw2, sb2, rho = _check_inputs(sigma_w2, sigma_b2, dropout_keep, "chi_1")
    kern = kernel_for(activation, owner="chi_1")
    s = sw2 / rho
    q = float(_solve_q(kern, s, sb2))
    qe = _Q_INF if math.isinf(q) else q
    with np.errstate(all="ignore"):
        return float(s * kern.D(qe))


def q_star(activation, sigma_w2: float, sigma_b2: float, *, dropout_keep: float = 1.0) -> float:
    """Fixed point of the length map reached from ``Q0 = 1`` (``inf``: none, lengths diverge)."""
    sw2, sb2, rho = _check_inputs(sigma_w2, sigma_b2, dropout_keep, "q_star")
    kern = kernel_for(activation, owner="q_star")
    return float(_solve_q(kern, sw2 / rho, sb2))


def length_map(activation, q, sigma_w2: float, sigma_b2: float, *,
               dropout_keep: float = 1.0) -> np.ndarray:
    """One step of the length map, ``sigma_w2 / rho * E[phi(sqrt(q) z)^2] + sigma_b2``, elementwise."""
    sw2, sb2, rho = _check_inputs(sigma_w2, sigma_b2, dropout_keep, "length_map")
    kern = kernel_for(activation, owner="length_map")
    return sw2 / rho * kern.V(np.asarray(q, dtype=float)) + sb2


def correlation_map(activation, c, sigma_w2: float, sigma_b2: float, *, q=None,
                    dropout_keep: float = 1.0) -> np.ndarray:
    """One step of the correlation map at length ``q`` (default ``q*``), elementwise in ``c``.

    ``(sigma_w2 * E[phi(u1) phi(u2)] + sigma_b2) / q_next`` where ``q_next`` is the length map
    applied to ``q`` (equal to ``q*`` at the fixed point).
    """
    sw2, sb2, rho = _check_inputs(sigma_w2, sigma_b2, dropout_keep, "correlation_map")
    kern = kernel_for(activation, owner="correlation_map")
    if q is None:
        q = float(_solve_q(kern, sw2 / rho, sb2))
        if not math.isfinite(q) or q == 0.0:
            # the limits q* -> inf / q* -> 0+ of the map at the fixed point (see _c_map_funcs)
            c = np.asarray(c, dtype=float)
            fdf = _c_map_funcs(kern, np.full(c.size, q), np.full(c.size, sw2), rho)
            return fdf(c.ravel(), np.arange(c.size))[0].reshape(c.shape)
    q = check_real(q, "q", "correlation_map", low=0.0, low_inclusive=False)
    c = np.asarray(c, dtype=float)
    q_next = sw2 / rho * kern.V(q) + sb2
    return (sw2 * kern.C(q, c) + sb2) / q_next


# --------------------------------------------------------------------------------------------
# Fast correlation map for grids: Mehler series.
# --------------------------------------------------------------------------------------------

def _mehler_funcs(kern: Kernel, q, sw2, rho):
    """The correlation map as a power series, ``C(q, c) = sum_k a_k^2 c^k`` (Mehler).

    The coefficients at each ``q`` are cubic-spline interpolated (in ``ln q``) from exact ones
    on the length-map table; since ``C`` is linear in them this is the spline interpolation of
    ``C(., c)`` itself, which is smooth in ``q``. The series stops at ``MEHLER_DEGREE``; two
    more terms carry the missing mass so that ``C(q, 1) = V(q)`` and ``dC/dc(q, 1) = q D(q)``
    stay exact. Accuracy against 2-D quadrature: ``chi_c`` within 1e-8 for tanh at ``q <= 5``;
    activations with kinks (hard_tanh, selu, elu) converge slowly, about 1e-3..1e-2 near
    ``c = 1``. ``q < 1e-12`` is evaluated at ``1e-12`` (the ``q -> 0`` limit to O(1e-12)).
    """
    q = np.maximum(np.asarray(q, dtype=float), _Q_TABLE[1])
    sw2 = np.broadcast_to(np.asarray(sw2, dtype=float), q.shape)
    coef, vq, _ = kern.mehler(q)
    # the share of C(q, 1) = V(q) the truncated series misses: how approximate it is
    tail = np.abs(coef[:, -2] + coef[:, -1]) / np.maximum(np.abs(vq), 1e-300)
    last = {"sel": None, "coef": None}

    def fdf(c, sel):
        # Horner for the value and the derivative at once; the gather of coefficient rows is
        # redone only when the caller's point set changes (it shrinks rarely, see _solve_c).
        if last["sel"] is None or last["sel"].size != sel.size or not np.array_equal(last["sel"], sel):
            last["sel"], last["coef"] = sel, np.ascontiguousarray(coef[sel].T)
        cf = last["coef"]
        p = np.zeros(sel.size)
        dp = np.zeros(sel.size)
        for j in range(cf.shape[0] - 1, -1, -1):
            dp *= c
            dp += p
            p *= c
            p += cf[j]
        w, qq = sw2[sel], q[sel]
        return 1.0 + w * (p - vq[sel] / rho) / qq, w * dp / qq

    fdf.tail = tail  # type: ignore[attr-defined]  # a function attribute, read in _analyze_arrays
    return fdf


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def interpret(r: MeanFieldResult) -> str:
    """One line in words for a :class:`MeanFieldResult` (used by ``gradhealth meanfield``)."""
    chi = r.chi_1
    depth = ("any depth as far as correlations go" if math.isinf(r.trainable_depth)
             else f"trainable depth ~ {r.trainable_depth:.0f} layers (6 xi_c)")
    if r.phase == "critical":
        line = (f"chi_1 = {_fmt(chi)}: critical (edge of chaos) - gradient norms are preserved "
                f"layer to layer; {depth}")
    elif r.phase == "ordered":
        line = (f"chi_1 = {_fmt(chi)} < 1: ordered - gradients shrink ~{_fmt(chi)}x per layer "
                f"(squared norm), inputs become alike; {depth}")
    else:
        kind = "chaotic" if r.c_star < 1.0 else "exploding (correlations still go to 1)"
        line = (f"chi_1 = {_fmt(chi)} > 1: {kind} - gradients grow ~{_fmt(chi)}x per layer "
                f"(squared norm); {depth}")
    if math.isinf(r.q_star):
        line += "; q* = inf: pre-activations grow without bound"
    elif r.chi_q == 1.0 and r.q_star == Q0:
        line += "; every length is a fixed point (q_l = q_0; q* shown for q_0 = 1)"
    return line
