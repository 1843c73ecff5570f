"""The Gaussian expectations of one activation (internal to :mod:`gradhealth.theory.meanfield`,
which re-exports :class:`Kernel`, :func:`kernel_for` and :data:`MEHLER_DEGREE`).

A :class:`Kernel` gives ``V(q)``, ``dV/dq``, ``D(q)``, ``C(q, c)`` and ``dC/dc / q`` for one
nonlinearity: closed forms for ``linear``, ``relu`` / ``leaky_relu`` (the arc-cosine kernel of
Cho & Saul 2009) and ``erf`` (the arcsine kernel of Williams 1997), segmented quadrature
(:mod:`gradhealth.theory._quadrature`) otherwise; plus the cached tables and Mehler
coefficients the fixed-point solvers and the phase-diagram fast path read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._checks import check_choice
from . import _quadrature as quad
from .activations import Activation, get_activation

__all__ = ["Kernel", "kernel_for", "MEHLER_DEGREE"]

#: The table that brackets ``q*``: 0, then 50 points per decade from 1e-12 to 1e12. A fixed
#: point above ``_Q_TABLE[-1]`` is reported as ``q* = inf``.
_Q_TABLE = np.concatenate([[0.0], np.logspace(-12.0, 12.0, 24 * 50 + 1)])
#: Hermite degree of the Mehler series (the grid fast path).
MEHLER_DEGREE = 160

# --------------------------------------------------------------------------------------------
# Kernels: the Gaussian expectations of one activation.
# --------------------------------------------------------------------------------------------

class Kernel:
    """The Gaussian expectations mean-field theory needs, for one activation ``phi``.

    With ``u = sqrt(q) z`` and ``(u1, u2)`` centred Gaussian with variances ``q``, correlation
    ``c``: ``V(q) = E[phi(u)^2]``, ``dV(q) = dV/dq = E[phi(u) phi'(u) z] / sqrt(q)`` (Stein's
    lemma; no second derivative needed), ``D(q) = E[phi'(u)^2]``,
    ``C(q, c) = E[phi(u1) phi(u2)]``, ``Cd(q, c) = E[phi'(u1) phi'(u2)] = dC/dc / q`` (Price).
    All vectorised over broadcast arrays.
    """

    name = "custom"
    method = "quadrature"
    #: ``phi`` positively homogeneous of degree 1 (linear, relu, leaky relu): ``V = v q``,
    #: ``D`` constant, ``C = q k(c)``.
    homogeneous = False

    def __init__(self, act: Activation):
        self.act = act
        self.name = act.name
        self._table = None
        self._table_D = None
        self._spline = None
        self._mehler_rows: dict[int, np.ndarray] = {}

    def _phi2(self, u):
        f = self.act.fn(u)
        return f * f

    def V(self, q):
        with np.errstate(all="ignore"):
            return quad.expect(self._phi2, q)

    def dV(self, q):
        u, z, w = quad.rule(q)
        with np.errstate(all="ignore"):
            val = np.sum(w * self.act.fn(u) * self.act.derivative(u) * z, axis=-1)
            return val / np.sqrt(np.maximum(np.asarray(q, dtype=float), quad.Q_FLOOR))

    def D(self, q):
        d = self.act.derivative
        with np.errstate(all="ignore"):
            return quad.expect(lambda u: d(u) ** 2, q)

    def C(self, q, c):
        with np.errstate(all="ignore"):
            return quad.expect_pair(self.act.fn, self.act.fn, q, c)

    def Cd(self, q, c):
        with np.errstate(all="ignore"):
            return quad.expect_pair(self.act.derivative, self.act.derivative, q, c)

    def table(self):
        """``(q, V, dV)`` on :data:`_Q_TABLE` (cached): brackets ``q*`` for any weights/biases."""
        if self._table is None:
            self._table = (_Q_TABLE, self.V(_Q_TABLE), self.dV(_Q_TABLE))
        return self._table

    def interp(self, q):
        """``(V, V', D)`` at ``q`` from cubic splines (in ``ln q``) through the table.

        Relative accuracy about 1e-8 (50 table points per decade). ``q`` below the first
        positive table point, or infinite, is evaluated exactly (per distinct value).
        """
        from scipy.interpolate import CubicSpline

        if self._spline is None:
            t, vt, dvt = self.table()
            y = np.stack([vt, dvt, self.table_D()], axis=-1)[1:]
            self._spline = CubicSpline(np.log(t[1:]), y, axis=0)
        q = np.asarray(q, dtype=float)
        out = np.empty(q.shape + (3,))
        inside = (q >= _Q_TABLE[1]) & (q <= _Q_TABLE[-1])
        out[inside] = self._spline(np.log(q[inside]))
        if (~inside).any():
            vals, inv = np.unique(q[~inside], return_inverse=True)
            with np.errstate(all="ignore"):
                exact = np.stack([self.V(vals), self.dV(vals), self.D(vals)], axis=-1)
            out[~inside] = exact[inv]
        return out[..., 0], out[..., 1], out[..., 2]

    def mehler(self, q):
        """Mehler coefficients ``(P, K + 3)`` at ``q`` (1-D, inside the table), plus ``V``, ``D``.

        Exact coefficients are computed once per table row (cached) over the rows the ``q``
        need, then spline-interpolated in ``ln q``; the last two columns carry the truncated
        mass so that ``C(q, 1) = V`` and ``dC/dc(q, 1) = q D`` (see :func:`_mehler_funcs`).
        """
        from scipy.interpolate import CubicSpline

        t = _Q_TABLE
        x = np.log(q)
        lt = np.log(t[1:])
        i = np.clip(np.searchsorted(lt, x), 1, lt.size - 1)   # cell [i - 1, i] of lt
        lo, hi = max(int(i.min()) - 3, 0), min(int(i.max()) + 3, lt.size)
        rows = np.arange(lo, hi) + 1                               # indices into t
        missing = [r for r in rows if r not in self._mehler_rows]
        if missing:
            tm = t[missing]
            with np.errstate(all="ignore"):
                a2 = quad.hermite_coefficients(self.act.fn, tm, MEHLER_DEGREE) ** 2
            kk = np.arange(a2.shape[1], dtype=float)
            # what the truncated series misses of C(q, 1) = V and dC/dc(q, 1) = q D, per row
            r1 = self.table()[1][missing] - a2.sum(axis=1)
            r2 = tm * self.table_D()[missing] - (a2 * kk).sum(axis=1)
            for r, row in zip(missing, np.concatenate([a2, r1[:, None], r2[:, None]], axis=1)):
                self._mehler_rows[r] = row
        cols = CubicSpline(lt[lo:hi], np.stack([self._mehler_rows[r] for r in rows]), axis=0)(x)
        a2, r1, r2 = cols[:, :-2], cols[:, -2], cols[:, -1]
        k = np.arange(a2.shape[1], dtype=float)
        v = a2.sum(axis=1) + r1
        d = ((a2 * k).sum(axis=1) + r2) / q
        # drop orders that are negligible everywhere (cheaper series); the residuals take them
        big = np.flatnonzero(np.max(np.abs(a2), axis=0) > 1e-18 * max(float(np.max(v)), 1e-300))
        kmax = int(big[-1]) + 1 if big.size else 1
        r1 = r1 + a2[:, kmax:].sum(axis=1)
        r2 = r2 + (a2[:, kmax:] * k[kmax:]).sum(axis=1)
        a2 = a2[:, :kmax]
        beta = r2 - kmax * r1
        alpha = r1 - beta
        return np.concatenate([a2, alpha[:, None], beta[:, None]], axis=1), v, d

    def table_D(self):
        """``D`` on :data:`_Q_TABLE` (cached), for the critical line."""
        if self._table_D is None:
            with np.errstate(all="ignore"):
                self._table_D = self.D(_Q_TABLE)
        return self._table_D


class _LinearKernel(Kernel):
    name, method, homogeneous = "linear", "closed form", True

    def V(self, q):
        return np.asarray(q, dtype=float) * 1.0

    def dV(self, q):
        return np.ones_like(np.asarray(q, dtype=float))

    def D(self, q):
        return np.ones_like(np.asarray(q, dtype=float))

    def C(self, q, c):
        return np.asarray(q, dtype=float) * np.asarray(c, dtype=float)

    def Cd(self, q, c):
        return np.ones(np.broadcast(np.asarray(q), np.asarray(c)).shape)


class _LeakyReluKernel(Kernel):
    """Arc-cosine kernels of degree 0 and 1 (Cho & Saul 2009); ``phi = a x + (1 - a) relu(x)``.

    ``E[relu(u1) relu(u2)] = q (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi)`` and
    ``E[1{u1 > 0} 1{u2 > 0}] = (pi - arccos c) / (2 pi)``; ``E[u1 relu(u2)] = q c / 2``.
    """

    method, homogeneous = "closed form", True

    def __init__(self, act: Activation, alpha: float):
        super().__init__(act)
        self.alpha = float(alpha)

    def V(self, q):
        return np.asarray(q, dtype=float) * (1.0 + self.alpha ** 2) / 2.0

    def dV(self, q):
        return np.full(np.shape(q), (1.0 + self.alpha ** 2) / 2.0)

    D = dV

    def C(self, q, c):
        a = self.alpha
        c = np.clip(np.asarray(c, dtype=float), -1.0, 1.0)
        k1 = (np.sqrt(1.0 - c * c) + (np.pi - np.arccos(c)) * c) / (2.0 * np.pi)
        return np.asarray(q, dtype=float) * (a * c + (1.0 - a) ** 2 * k1)

    def Cd(self, q, c):
        a = self.alpha
        c = np.clip(np.asarray(c, dtype=float), -1.0, 1.0)
        k0 = (np.pi - np.arccos(c)) / (2.0 * np.pi)
        return np.broadcast_to(a + (1.0 - a) ** 2 * k0, np.broadcast(np.asarray(q), c).shape) * 1.0


class _ErfKernel(Kernel):
    """Arcsine kernel (Williams 1997): ``E[erf(u1) erf(u2)] = 2/pi asin(2 q c / (1 + 2 q))``.

    ``phi' = 2/sqrt(pi) exp(-x^2)`` gives ``E[phi'(u1) phi'(u2)] = 4/pi det(I + 2 Sigma)^(-1/2)``.
    """

    name, method = "erf", "closed form"

    def V(self, q):
        q = np.asarray(q, dtype=float)
        return 2.0 / np.pi * np.arcsin(2.0 * q / (1.0 + 2.0 * q))

    def dV(self, q):
        q = np.asarray(q, dtype=float)
        return 4.0 / (np.pi * (1.0 + 2.0 * q) * np.sqrt(1.0 + 4.0 * q))

    def D(self, q):
        return 4.0 / np.pi / np.sqrt(1.0 + 4.0 * np.asarray(q, dtype=float))

    def C(self, q, c):
        q, c = np.asarray(q, dtype=float), np.asarray(c, dtype=float)
        return 2.0 / np.pi * np.arcsin(np.clip(2.0 * q * c / (1.0 + 2.0 * q), -1.0, 1.0))

    def Cd(self, q, c):
        q, c = np.asarray(q, dtype=float), np.asarray(c, dtype=float)
        return 4.0 / np.pi / np.sqrt((1.0 + 2.0 * q) ** 2 - 4.0 * q * q * c * c)


_PROBE = np.linspace(-5.0, 5.0, 41) + 0.0123  # avoids the kinks


def _matches(act: Activation, fn: Callable, dfn: Callable) -> bool:
    """True if ``act`` really is ``fn`` (a user callable named 'relu' need not be relu)."""
    with np.errstate(all="ignore"):
        try:
            return bool(np.allclose(act.fn(_PROBE.copy()), fn(_PROBE), rtol=1e-12, atol=1e-14)
                        and np.allclose(act.derivative(_PROBE.copy()), dfn(_PROBE),
                                        rtol=1e-12, atol=1e-14))
        except Exception:  # a user function that cannot take our probe: use quadrature
            return False


_KERNEL_CACHE: dict[tuple, Kernel] = {}


def kernel_for(activation, *, method: str = "auto", owner: str = "analyze") -> Kernel:
    """The :class:`Kernel` (Gaussian expectations) for ``activation``.

    Args:
        activation: a name, an :class:`~gradhealth.theory.activations.Activation` or a callable
            with a derivative (see :func:`~gradhealth.theory.activations.get_activation`).
        method: ``"auto"`` (closed form for linear, relu, leaky_relu and erf, quadrature
            otherwise) or ``"quadrature"`` (always quadrature: the independent check).
    """
    check_choice(method, "method", owner, ("auto", "quadrature"))
    act = get_activation(activation, owner=owner)
    key = None
    if act.name != "custom" and isinstance(activation, str):
        key = (act.name, tuple(sorted(act.params.items())), method)
        if key in _KERNEL_CACHE:
            return _KERNEL_CACHE[key]
    k: Kernel = Kernel(act)
    if method == "auto":
        alpha = float(act.params.get("alpha", 0.0)) if act.name in ("relu", "leaky_relu") else 0.0
        if act.name == "linear" and _matches(act, lambda x: x, np.ones_like):
            k = _LinearKernel(act)
        elif act.name in ("relu", "leaky_relu") and _matches(
                act, lambda x: np.where(x > 0, x, alpha * x), lambda x: np.where(x > 0, 1.0, alpha)):
            k = _LeakyReluKernel(act, alpha)
            k.name = act.name
        elif act.name == "erf":
            from scipy import special

            if _matches(act, special.erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x)):
                k = _ErfKernel(act)
    if key is not None:
        _KERNEL_CACHE[key] = k
    return k
