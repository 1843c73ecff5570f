"""Mean-field fixed points beyond the tabulated lengths (q > 1e12).

tanh is bounded, so ``q* <= sigma_w2 + sigma_b2`` is finite at any ``sigma_w2``; the solver
used to answer ``q* = inf`` past its table's last length and then evaluate ``chi_1`` at
``q = 1e30`` (5.32 at ``sigma_w2 = 1e16`` instead of about 5.3e7). Oracle: SciPy's adaptive
quadrature in pre-activation units, where the narrow region ``|u| < 50`` that carries
``sech^2`` and ``sech^4`` is integrated directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from gradhealth.theory import meanfield


def _gauss_mean(f, q: float) -> float:
    """E[f(u)], u ~ N(0, q), for an f that vanishes beyond |u| = 50 (sech powers)."""
    dens = lambda u: math.exp(-0.5 * u * u / q) / math.sqrt(2 * math.pi * q)  # noqa: E731
    return quad(lambda u: f(u) * dens(u), -50, 50, points=[0.0], limit=200, epsabs=0, epsrel=1e-12)[0]


def _sech2(u):
    return 1.0 / math.cosh(u) ** 2


@pytest.mark.parametrize("sw2", [1e13, 1e16])
@pytest.mark.parametrize("sb2", [0.0, 0.05])
def test_tanh_fixed_point_and_chi_1_at_huge_weight_variance(sw2, sb2):
    q = meanfield.q_star("tanh", sw2, sb2)
    assert math.isfinite(q) and 0.99 * sw2 < q <= sw2 + sb2
    v = 1.0 - _gauss_mean(_sech2, q)                     # E[tanh^2] = 1 - E[sech^2]
    assert q == pytest.approx(sw2 * v + sb2, rel=1e-9)    # it is the fixed point
    chi = sw2 * _gauss_mean(lambda u: _sech2(u) ** 2, q)
    assert meanfield.chi_1("tanh", sw2, sb2) == pytest.approx(chi, rel=1e-6)


def test_an_unbounded_map_still_diverges():
    """relu above the critical point and a linear-tailed activation keep q* = inf."""
    assert math.isinf(meanfield.q_star("relu", 3.0, 0.1))
    assert math.isinf(meanfield.q_star("elu", 3.0, 0.1))
    assert np.isfinite(meanfield.q_star("tanh", 1e3, 0.1))
