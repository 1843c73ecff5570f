"""Phase-diagram speed: vectorised ``phase_diagram`` vs a naive per-point scipy.integrate loop.

The naive baseline is what one writes from the papers: for each (sigma_w2, sigma_b2), solve
the length map with ``brentq`` over ``scipy.integrate.quad``, get ``chi_1`` with ``quad``, and
in the chaotic region solve the correlation map with ``brentq`` over ``dblquad`` and take
``chi_c`` with ``dblquad``. It is far too slow for 40 000 points, so it is timed on a random
subsample and extrapolated linearly (said so in the table). The same subsample checks that both
give the same numbers.

Run: ``python -m benchmarks.bench_phase`` (no asserts on time).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import integrate, optimize

N_GRID = 200
N_NAIVE = 12          # points timed with the naive loop (split evenly ordered / chaotic)
LIM = 10.0            # |z| cut-off of the naive integrals


def _naive_point(sw2: float, sb2: float) -> dict:
    """One grid point the straightforward way (tanh, no dropout)."""
    def e1(f, q):
        r = math.sqrt(q)
        return integrate.quad(lambda z: f(r * z) * math.exp(-0.5 * z * z), -LIM, LIM,
                              epsabs=1e-13, epsrel=1e-11, limit=200)[0] / math.sqrt(2 * math.pi)

    def e2(f, q, c):
        r, s = math.sqrt(q), math.sqrt(max(1 - c * c, 0.0))
        g = lambda z2, z1: f(r * z1) * f(r * (c * z1 + s * z2)) * math.exp(-0.5 * (z1 * z1 + z2 * z2))  # noqa: E731
        return integrate.dblquad(g, -LIM, LIM, -LIM, LIM, epsabs=1e-11, epsrel=1e-9)[0] / (2 * math.pi)

    phi = math.tanh
    dphi = lambda u: 1.0 - math.tanh(u) ** 2  # noqa: E731
    h = lambda q: sw2 * e1(lambda u: phi(u) ** 2, q) + sb2 - q  # noqa: E731
    q = 0.0 if h(1e-12) <= 0 else optimize.brentq(h, 1e-12, sw2 + sb2 + 1.0, xtol=1e-14, rtol=1e-12)
    chi1 = sw2 * e1(lambda u: dphi(u) ** 2, max(q, 1e-300))
    c, chic = 1.0, chi1
    if chi1 > 1.0:
        g = lambda cc: (sw2 * e2(phi, q, cc) + sb2) / q - cc  # noqa: E731
        c = 0.0 if g(0.0) <= 1e-14 else optimize.brentq(g, 0.0, 1.0 - 1e-9, xtol=1e-10)
        chic = sw2 * e2(dphi, q, c)
    return {"q_star": q, "chi_1": chi1, "c_star": c, "chi_c": chic}


def main(argv=None) -> None:
    from gradhealth.theory.criticality import phase_diagram
    from gradhealth.theory.meanfield import _KERNEL_CACHE

    w = np.linspace(0.02, 4.0, N_GRID)
    b = np.linspace(0.0, 0.3, N_GRID)
    _KERNEL_CACHE.clear()
    t0 = time.perf_counter()
    pd = phase_diagram("tanh", w, b)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        phase_diagram("tanh", w, b)
        warm.append(time.perf_counter() - t0)
    warm_s = min(warm)

    rng = np.random.default_rng(0)
    ordered = np.argwhere(pd.chi_1 < 1)
    chaotic = np.argwhere(pd.chi_1 > 1)
    pick = np.concatenate([ordered[rng.choice(len(ordered), N_NAIVE // 2, replace=False)],
                           chaotic[rng.choice(len(chaotic), N_NAIVE // 2, replace=False)]])
    t0 = time.perf_counter()
    naive = [_naive_point(w[j], b[i]) for i, j in pick]
    per_point = (time.perf_counter() - t0) / len(pick)
    # weight the extrapolation by the share of chaotic points (they need the 2-D integrals)
    t_ord = []
    for i, j in pick[: N_NAIVE // 2]:
        t1 = time.perf_counter()
        _naive_point(w[j], b[i])
        t_ord.append(time.perf_counter() - t1)
    per_ord = float(np.mean(t_ord))
    per_chaos = max(2 * per_point - per_ord, per_ord)
    frac = len(chaotic) / pd.chi_1.size
    naive_total = pd.chi_1.size * (frac * per_chaos + (1 - frac) * per_ord)

    diffs = {k: 0.0 for k in ("q_star", "chi_1", "c_star", "chi_c")}
    for (i, j), ref in zip(pick, naive):
        for k in diffs:
            got, want = float(getattr(pd, k)[i, j]), ref[k]
            diffs[k] = max(diffs[k], abs(got - want) / max(abs(want), 1e-12) if k != "c_star"
                           else abs(got - want))

    print(f"tanh phase diagram, {N_GRID} x {N_GRID} = {pd.chi_1.size} points "
          f"(chi_1, q*, c*, chi_c, xi_c), {frac:.0%} chaotic")
    print(f"{'method':<58} {'seconds':>10}")
    print(f"{'gradhealth phase_diagram, first call (builds tables)':<58} {cold:>10.3f}")
    print(f"{'gradhealth phase_diagram, warm (best of 3)':<58} {warm_s:>10.3f}")
    print(f"{'naive quad/dblquad loop, per ordered point':<58} {per_ord:>10.3f}")
    print(f"{'naive quad/dblquad loop, per chaotic point':<58} {per_chaos:>10.3f}")
    label = f"naive loop, whole grid (extrapolated from {len(pick)} points)"
    print(f"{label:<58} {naive_total:>10.0f}")
    print(f"speed-up: {naive_total / cold:,.0f}x (cold), {naive_total / warm_s:,.0f}x (warm)")
    print("agreement on the subsample (max): "
          + ", ".join(f"{k} {v:.1e}" + (" abs" if k == "c_star" else " rel") for k, v in diffs.items()))


if __name__ == "__main__":
    main()
