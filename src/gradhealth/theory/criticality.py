"""Criticality: where ``chi_1 = 1`` (the edge of chaos), and the whole phase diagram.

At the critical point ``sigma_w2 / rho * E[phi'(sqrt(q*) z)^2] = 1`` and ``q*`` is a fixed point
of the length map. Both conditions together fix ``q*`` from ``sigma_b2`` alone::

    sigma_b2 = q - V(q) / D(q),   sigma_w2 = rho / D(q),

with ``V(q) = E[phi(sqrt(q) z)^2]`` and ``D(q) = E[phi'(sqrt(q) z)^2]``: one equation in ``q``
per bias variance, solved for a whole array of them at once. Dropout (keep probability
``rho``) scales the critical weight variance by ``rho`` and leaves ``q*`` unchanged.

For activations with constant ``D`` (relu: ``1/2``, leaky relu: ``(1 + a^2)/2``, linear: 1)
``chi_1`` does not depend on ``q*`` and the critical ``sigma_w2`` is ``rho / D`` (2 for relu, 1
for linear) for every ``sigma_b2``; but with ``sigma_b2 > 0`` the length map then has no fixed
point (``q_l = q_0 + l sigma_b2`` grows linearly, ``q* = inf``), and with ``sigma_b2 = 0`` every
length is a fixed point. :func:`critical_sigma_w2` returns ``rho / D`` in both cases and
documents it here; :func:`gradhealth.theory.meanfield.analyze` reports the ``q*`` that goes
with it.

Where an activation has no order-to-chaos transition at some ``sigma_b2`` (``q - V/D`` never
reaches it for ``q <= 1e12``, as for softplus, whose nonzero mean keeps ``chi_1 < 1`` at every
finite ``q*``), :func:`critical_line` returns ``nan`` there and :func:`critical_sigma_w2`
raises :class:`~gradhealth.errors.ParameterError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_choice, check_real
from ..errors import ParameterError
from .meanfield import CRITICAL_TOL, Q0, Kernel, _analyze_arrays, _solve_q, kernel_for

__all__ = ["critical_sigma_w2", "critical_line", "phase_diagram", "PhaseDiagram",
           "INIT_POINTS"]

#: Above this share of ``E[phi^2]`` left out of the Mehler series, a PhaseDiagram says its
#: correlation numbers are approximate (tanh on the default grid: 4e-11).
_TAIL_NOTE = 1e-9
#: Named initialisations as ``sigma_w2`` (weight variance times fan-in).
INIT_POINTS = {"LeCun / Xavier (fan_in = fan_out)": 1.0, "He (Kaiming)": 2.0}


def _critical(kern: Kernel, sb2, rho: float, *, bisect: int = 32,
              max_roots: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_w2, q*)`` on the critical line at each ``sb2``; ``nan`` where there is none.

    Every root of ``q - V(q)/D(q) = sb2`` (bracketed on the length-map table, refined by
    bisection) is a candidate; it counts only if ``q`` is the fixed point the length map reaches
    at that ``sigma_w2`` (from ``Q0``, as :func:`~gradhealth.theory.meanfield.analyze` reports
    it): for gelu at ``sigma_b2 = 0`` the only root is the unstable ``q = 0``, and ``chi_1``
    jumps over 1 instead of passing through it. The smallest valid ``sigma_w2`` is returned.
    """
    sb2 = np.atleast_1d(np.asarray(sb2, dtype=float))
    if kern.homogeneous:
        sw2 = np.full(sb2.shape, rho / float(kern.D(1.0)))
        return sw2, np.where(sb2 > 0, np.inf, Q0)
    t, vt, _ = kern.table()
    dt = kern.table_D()
    with np.errstate(all="ignore"):
        h = t - vt / dt
    h = np.where(np.isnan(h), -np.inf, h)
    best_w = np.full(sb2.shape, np.inf)
    best_q = np.full(sb2.shape, np.nan)
    sign = (h[None, :] - sb2[:, None]) > 0                      # (P, T)
    cells = sign[:, 1:] != sign[:, :-1]                          # a root inside cell j
    # The root q = 0 itself (sigma_b2 = 0 and phi(0) = 0: tanh, hard_tanh, selu, ...): there
    # h is flat to rounding (hard_tanh: q - V/D is exponentially small below q ~ 0.05).
    at0 = np.flatnonzero(np.abs(h[0] - sb2) <= 1e-14)
    if at0.size:
        with np.errstate(all="ignore"):
            w0_scalar = rho / float(kern.D(0.0))
        w0 = np.full(at0.size, w0_scalar)
        ok0, q0 = _check_reached(kern, w0, sb2[at0], rho)
        best_w[at0[ok0]], best_q[at0[ok0]] = w0[ok0], q0[ok0]
    for _ in range(max_roots):
        has = cells.any(axis=1)
        if not has.any():
            break
        p = np.flatnonzero(has)
        j = np.argmax(cells[p], axis=1)
        cells[p, j] = False
        lo, hi, b = t[j], t[j + 1], sb2[p]
        up = sign[p, j + 1]                                      # h - b increasing across it
        for _ in range(bisect):                                  # on the splines: cheap
            mid = 0.5 * (lo + hi)
            v, _, d = kern.interp(mid)
            with np.errstate(all="ignore"):
                above = (mid - v / d) > b
            left = above == up                                   # root left of mid
            lo, hi = np.where(left, lo, mid), np.where(left, mid, hi)
        q = _secant_polish(kern, 0.5 * (lo + hi), b, t[j], t[j + 1])
        with np.errstate(all="ignore"):
            w = rho / kern.D(q)
        valid, reached = _check_reached(kern, w, b, rho)
        better = valid & (w < best_w[p])
        best_w[p[better]], best_q[p[better]] = w[better], reached[better]
    return np.where(np.isfinite(best_w), best_w, np.nan), best_q


def _check_reached(kern: Kernel, w, b, rho):
    """``(valid, q)``: is ``chi_1 = 1`` at the fixed point the length map actually reaches?

    A root of ``q - V/D = sigma_b2`` can be a fixed point nobody reaches (gelu at
    ``sigma_b2 = 0``: ``q = 0`` is unstable); and where the length map is flat to rounding
    (hard_tanh near ``q = 0``) the reached ``q`` differs from the root but ``chi_1`` does not.
    """
    with np.errstate(all="ignore"):
        q = _solve_q(kern, w / rho, b)
        d = kern.D(np.where(np.isfinite(q), q, 1e30))
        valid = np.isfinite(w) & np.isfinite(q) & (np.abs(w / rho * d - 1.0) <= 1e-8)
    return valid, q


def _secant_polish(kern: Kernel, q, b, lo, hi, steps: int = 4) -> np.ndarray:
    """A few secant steps on the exact ``q - V(q)/D(q) - b`` from the spline root (to ~1e-15)."""
    def h(x):
        with np.errstate(all="ignore"):
            return x - kern.V(x) / kern.D(x) - b

    x0, x1 = q, np.clip(q * (1.0 + 1e-7) + 1e-300, lo, hi)
    h0, h1 = h(x0), h(x1)
    for _ in range(steps):
        with np.errstate(all="ignore"):
            x2 = np.where(h1 != h0, x1 - h1 * (x1 - x0) / (h1 - h0), x1)
        x2 = np.clip(np.where(np.isfinite(x2), x2, x1), lo, hi)
        x0, h0, x1 = x1, h1, x2
        h1 = h(x1)
    return x1


def _check_rho(dropout_keep, owner):
    return check_real(dropout_keep, "dropout_keep", owner, low=0.0, high=1.0, low_inclusive=False,
                      fix="pass the probability of keeping a unit, e.g. 0.9; 1.0 means no dropout.")


def _check_grid(values, name, owner) -> np.ndarray:
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise ParameterError(name, owner, "a 1-D array of finite numbers >= 0", values,
                             f"pass e.g. {name}=numpy.linspace(0, 4, 200).") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ParameterError(name, owner, "a non-empty 1-D array of finite numbers >= 0",
                             values if np.size(values) <= 8 else f"array of shape {arr.shape}",
                             f"pass e.g. {name}=numpy.linspace(0, 4, 200).")
    return arr


def critical_sigma_w2(activation, sigma_b2: float, *, dropout_keep: float = 1.0) -> float:
    """The weight variance with ``chi_1 = 1`` at bias variance ``sigma_b2``: the edge of chaos.

    Examples: tanh at ``sigma_b2 = 0`` gives 1.0; relu gives 2.0 and linear 1.0 for every
    ``sigma_b2`` (see the module doc: their ``q*`` is then ``inf`` for ``sigma_b2 > 0``).

    Raises:
        ParameterError: bad input, or ``activation`` has no transition at this ``sigma_b2``.
    """
    sb2 = check_real(sigma_b2, "sigma_b2", "critical_sigma_w2", low=0.0,
                     fix="pass a bias variance >= 0, e.g. 0.05.")
    rho = _check_rho(dropout_keep, "critical_sigma_w2")
    kern = kernel_for(activation, owner="critical_sigma_w2")
    sw2, _ = _critical(kern, np.array([sb2]), rho)
    if not math.isfinite(sw2[0]):
        raise ParameterError("sigma_b2", "critical_sigma_w2",
                             f"a bias variance at which {kern.name} has an order-to-chaos "
                             "transition (chi_1 = 1 at a finite fixed point q*)", sigma_b2,
                             f"{kern.name} stays ordered (chi_1 < 1) at every finite q* here; "
                             "use analyze() to see chi_1 at a given sigma_w2.")
    return float(sw2[0])


def critical_line(activation, sigma_b2_values, *, dropout_keep: float = 1.0) -> np.ndarray:
    """Critical ``sigma_w2`` for each bias variance in ``sigma_b2_values`` (vectorised).

    ``nan`` where there is no transition (see the module doc).
    """
    sb2 = _check_grid(sigma_b2_values, "sigma_b2_values", "critical_line")
    rho = _check_rho(dropout_keep, "critical_line")
    kern = kernel_for(activation, owner="critical_line")
    return _critical(kern, sb2, rho)[0]


@dataclass(frozen=True)
class PhaseDiagram:
    """Mean-field quantities on a ``sigma_w2 x sigma_b2`` grid.

    Every 2-D array has shape ``(len(sigma_b2), len(sigma_w2))``: rows are bias variances,
    columns weight variances, so ``imshow``/``pcolormesh`` put ``sigma_w2`` on the x axis.

    Attributes:
        activation: activation name.
        sigma_w2, sigma_b2: the grid axes.
        q_star, chi_1, c_star, chi_c, xi_q, xi_c: as in
            :class:`~gradhealth.theory.meanfield.MeanFieldResult`.
        critical: critical ``sigma_w2`` at each ``sigma_b2`` (``nan``: no transition).
        dropout_keep: keep probability.
        note: empty, or a sentence saying which numbers are approximate (activations with
            kinks, whose Mehler series converges slowly: ``c_star``/``chi_c``/``xi_c`` in the
            chaotic region; :func:`~gradhealth.theory.meanfield.analyze` is exact there).
    """

    activation: str
    sigma_w2: np.ndarray = field(repr=False)
    sigma_b2: np.ndarray = field(repr=False)
    q_star: np.ndarray = field(repr=False)
    chi_1: np.ndarray = field(repr=False)
    c_star: np.ndarray = field(repr=False)
    chi_c: np.ndarray = field(repr=False)
    xi_q: np.ndarray = field(repr=False)
    xi_c: np.ndarray = field(repr=False)
    critical: np.ndarray = field(repr=False)
    dropout_keep: float = 1.0
    note: str = ""

    @property
    def phase(self) -> np.ndarray:
        """``"ordered"`` / ``"critical"`` / ``"chaotic"`` at each grid point."""
        chi = self.chi_1
        return np.where(np.abs(chi - 1.0) <= CRITICAL_TOL, "critical",
                        np.where(chi < 1.0, "ordered", "chaotic"))

    def to_dict(self) -> dict:
        """Plain lists, for JSON (through :func:`gradhealth.events.jsonable`)."""
        return {k: getattr(self, k) for k in ("activation", "dropout_keep", "sigma_w2", "sigma_b2",
                                              "q_star", "chi_1", "c_star", "chi_c", "xi_q",
                                              "xi_c", "critical", "note")}

    def plot(self, ax=None, color: str = "chi_1", *, inits: bool = True, colorbar: bool = True):
        """Draw the diagram on ``ax`` (a new figure if None); returns the axes.

        ``color="chi_1"`` shows ``log2(chi_1)`` on a diverging map (white = critical; the range
        is symmetric, set by the largest ``chi_1``, so deep blue means "at least that much
        vanishing");
        ``color="xi_c"`` shows ``log10(xi_c)``. The critical line is drawn in black and, with
        ``inits``, LeCun/Xavier (``sigma_w2 = 1``) and He (``sigma_w2 = 2``) are marked at
        ``sigma_b2 = 0`` and ``0.05`` where those lie inside the grid. Where ``q* = inf`` (no
        fixed point: lengths grow without bound) the diagram is hatched.
        """
        check_choice(color, "color", "PhaseDiagram.plot", ("chi_1", "xi_c"))
        import matplotlib.pyplot as plt
        from matplotlib.colors import TwoSlopeNorm

        if ax is None:
            _, ax = plt.subplots(figsize=(6.0, 4.4))
        x, y = self.sigma_w2, self.sigma_b2
        with np.errstate(all="ignore"):
            if color == "chi_1":
                z = np.log2(self.chi_1)
                # symmetric range set by the exploding side, so the region around the critical
                # line is not washed out by chi_1 -> 0 at tiny sigma_w2
                pos = z[np.isfinite(z) & (z > 0)]
                lim = float(np.clip(pos.max() if pos.size else 1.0, 0.25, 3.0))
                mesh = ax.pcolormesh(x, y, np.clip(z, -lim, lim), shading="auto", cmap="RdBu_r",
                                     norm=TwoSlopeNorm(0.0, -lim, lim))
                label = r"$\log_2 \chi_1$  (blue: vanishing, red: exploding)"
            else:
                z = np.log10(np.clip(self.xi_c, 1e-2, 1e4))
                mesh = ax.pcolormesh(x, y, z, shading="auto", cmap="viridis")
                label = r"$\log_{10} \xi_c$ (depth scale, layers)"
        if colorbar:
            ax.figure.colorbar(mesh, ax=ax, label=label)
        unbounded = np.isinf(self.q_star)
        if unbounded.any() and x.size > 1 and y.size > 1:
            # where the length map has no fixed point (relu right of sigma_w2 = 2, ...)
            ax.contourf(x, y, unbounded.astype(float), levels=[0.5, 1.5], colors="none",
                        hatches=["//"])
            ax.plot([], [], ls="none", marker="s", mfc="none", mec="0.3", ms=8,
                    label="hatched: q* = inf (no fixed point)")
        crit = self.critical
        good = np.isfinite(crit) & (crit >= x.min()) & (crit <= x.max())
        if good.any():
            ax.plot(crit[good], y[good], "k-", lw=2, label=r"critical line $\chi_1 = 1$")
        if inits:
            marks = [(1.0, "o", "LeCun/Xavier"), (2.0, "s", "He")]
            for sw2, m, name in marks:
                pts = [b for b in (0.0, 0.05) if y.min() <= b <= y.max()]
                if x.min() <= sw2 <= x.max() and pts:
                    ax.plot([sw2] * len(pts), pts, m, mfc="white", mec="k", ms=8, ls="none",
                            label=f"{name} ($\\sigma_w^2$={sw2:g})")
        ax.set_xlabel(r"$\sigma_w^2$ (weight variance x fan-in)")
        ax.set_ylabel(r"$\sigma_b^2$ (bias variance)")
        title = f"{self.activation}: mean-field phase diagram"
        if self.dropout_keep < 1.0:
            title += f" (dropout keep {self.dropout_keep:g})"
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
        return ax


def phase_diagram(activation, sigma_w2, sigma_b2, *, dropout_keep: float = 1.0) -> PhaseDiagram:
    """Mean-field quantities on the grid ``sigma_w2 x sigma_b2``, vectorised over the grid.

    ``q*`` is bracketed from one table of the length map per activation and polished by one
    exact Newton step; the correlation map in the chaotic region is evaluated as a Mehler power
    series whose coefficients come from one matrix product for the whole grid (closed forms
    for linear, relu, leaky relu and erf). A 200 x 200 tanh grid takes well under a second
    (``python -m benchmarks.bench_phase``); values agree with
    :func:`~gradhealth.theory.meanfield.analyze` (see ``tests/theory/test_criticality.py``).

    Args:
        activation: as for :func:`~gradhealth.theory.meanfield.analyze`.
        sigma_w2, sigma_b2: 1-D arrays of weight and bias variances (finite, ``>= 0``); an int
            ``n`` is not accepted, pass ``numpy.linspace(...)``.
        dropout_keep: keep probability ``rho``.
    """
    owner = "phase_diagram"
    w = _check_grid(sigma_w2, "sigma_w2", owner)
    b = _check_grid(sigma_b2, "sigma_b2", owner)
    rho = _check_rho(dropout_keep, owner)
    kern = kernel_for(activation, owner=owner)
    W, B = np.meshgrid(w, b)
    r = _analyze_arrays(kern, W, B, rho, fast=True)
    crit, _ = _critical(kern, b, rho)
    tail = float(np.max(r["mehler_tail"]))
    note = ""
    if tail > _TAIL_NOTE:
        note = (f"{kern.name}: c*, chi_c and xi_c in the chaotic region are approximate (the "
                f"Mehler series misses up to {tail:.1e} of E[phi^2] and converges slowly for "
                f"activations with kinks; chi_c within about 1e-2); analyze() is exact.")
    return PhaseDiagram(activation=kern.name, sigma_w2=w, sigma_b2=b, q_star=r["q_star"],
                        chi_1=r["chi_1"], c_star=r["c_star"], chi_c=r["chi_c"], xi_q=r["xi_q"],
                        xi_c=r["xi_c"], critical=crit, dropout_keep=rho, note=note)
