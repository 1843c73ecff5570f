"""The prediction side (torch-free): the xi_c curve and the k fit."""

import math
import subprocess
import sys

import numpy as np
import pytest

from gradhealth.errors import ParameterError
from gradhealth.theory.criticality import critical_sigma_w2, phase_diagram
from gradhealth.theory.meanfield import correlation_map
from gradhealth.theory.trainability import PAPER_K, depth_scale_curve, fit_depth_multiple


def _xi_c_by_iteration(sw2, sb2):
    """Independent oracle: iterate the public correlation map to c*, slope by central difference."""
    c = 0.2
    for _ in range(5000):                 # a contraction: stop once it no longer moves
        c, last = float(correlation_map("tanh", c, sw2, sb2)), c
        if abs(c - last) <= 1e-15:
            break
    h = 1e-6 * min(c, 1 - c) if c < 1 - 1e-9 else 1e-6
    lo = max(c - h, 0.0)
    hi = min(c + h, 1.0)
    slope = (float(correlation_map("tanh", hi, sw2, sb2)) - float(correlation_map("tanh", lo, sw2, sb2))) / (hi - lo)
    return -1.0 / math.log(slope)


@pytest.mark.parametrize("sw2", [2.5, 4.0])
def test_xi_c_matches_iterated_correlation_map_chaotic(sw2):
    curve = depth_scale_curve("tanh", [sw2], sigma_b2=0.05)
    assert curve.xi_c[0] == pytest.approx(_xi_c_by_iteration(sw2, 0.05), rel=1e-4)


def test_xi_c_matches_phase_diagram_and_critical_line():
    w = np.linspace(0.5, 4.0, 15)
    curve = depth_scale_curve("tanh", w, sigma_b2=0.05)
    pd = phase_diagram("tanh", w, [0.05])            # the Mehler-series path: another computation
    np.testing.assert_allclose(curve.xi_c, pd.xi_c[0], rtol=1e-5)
    np.testing.assert_allclose(curve.chi_1, pd.chi_1[0], rtol=1e-6)
    assert curve.critical == pytest.approx(critical_sigma_w2("tanh", 0.05), rel=1e-12)
    # the depth scale peaks at the grid point nearest the critical sigma_w2
    assert abs(w[np.argmax(curve.xi_c)] - curve.critical) <= 0.25 / 2 + 1e-9
    np.testing.assert_allclose(curve.depth(), PAPER_K * curve.xi_c)


@pytest.mark.parametrize("activation, rtol", [("tanh", 1e-6), ("erf", 1e-6), ("selu", 1e-6), ("hard_tanh", 0.03)])
def test_fast_curve_matches_the_exact_one(activation, rtol):
    """The Mehler-series curve (drawn by the trainability figure) against exact quadrature."""
    w = np.linspace(0.5, 4.0, 12)
    exact = depth_scale_curve(activation, w, sigma_b2=0.05)
    fast = depth_scale_curve(activation, w, sigma_b2=0.05, fast=True)
    np.testing.assert_allclose(fast.xi_c, exact.xi_c, rtol=rtol)
    np.testing.assert_allclose(fast.chi_1, exact.chi_1, rtol=1e-6)
    assert fast.critical == exact.critical


def test_relu_xi_c_is_infinite_on_the_exploding_side():
    curve = depth_scale_curve("relu", [1.0, 3.0], sigma_b2=0.05)
    assert math.isfinite(curve.xi_c[0]) and math.isinf(curve.xi_c[1]) and curve.critical == 2.0


def _brute_force_k(xi, depths, trainable, ks):
    best = max(np.mean((np.asarray(depths)[:, None] < k * xi[None, :]) == trainable) for k in ks)
    return best


def test_fit_recovers_a_planted_k_and_matches_brute_force():
    rng = np.random.default_rng(0)
    xi = np.array([2.0, 5.0, 12.0, 40.0, 9.0, 3.0])
    depths = np.array([4, 8, 16, 32, 64, 128])
    truth = depths[:, None] < 3.3 * xi[None, :]
    fit = fit_depth_multiple(xi, depths, truth)
    assert fit.agreement == 1.0 and fit.k_low < 3.3 < fit.k_high and fit.k_low < fit.k < fit.k_high
    noisy = truth ^ (rng.random(truth.shape) < 0.15)
    fit = fit_depth_multiple(xi, depths, noisy)
    ks = np.geomspace(0.01, 1000, 20001)             # oracle: a dense scan of k
    assert fit.agreement == pytest.approx(_brute_force_k(xi, depths, noisy, ks))
    inside = np.mean((depths[:, None] < fit.k * xi[None, :]) == noisy)
    assert inside == pytest.approx(fit.agreement)
    assert fit.agreement_paper == pytest.approx(np.mean((depths[:, None] < 6 * xi[None, :]) == noisy))


def test_fit_leaves_out_nan_columns_and_counts_inf_as_always_trainable():
    xi = np.array([np.nan, np.inf, 4.0])
    t = np.array([[False, True, True], [True, True, False]])
    fit = fit_depth_multiple(xi, [8, 32], t)
    assert fit.cells == 4 and fit.agreement == 1.0 and 2.0 < fit.k < 8.0


@pytest.mark.parametrize("bad", [dict(xi_c=[]), dict(depths=[-1, 4]), dict(trainable=np.ones((3, 2), bool))])
def test_fit_bad_input_names_the_parameter(bad):
    args = dict(xi_c=[1.0, 2.0], depths=[4, 8], trainable=np.ones((2, 2), bool))
    args.update(bad)
    with pytest.raises(ParameterError) as e:
        fit_depth_multiple(**args)
    assert f"'{next(iter(bad))}'" in str(e.value)


def test_curve_bad_input():
    with pytest.raises(ParameterError, match="'sigma_w2'"):
        depth_scale_curve("tanh", [])
    with pytest.raises(ParameterError, match="activation"):
        depth_scale_curve("nope", [1.0])


def test_trainability_theory_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from gradhealth.theory.trainability import depth_scale_curve, fit_depth_multiple\n"
            "import gradhealth.experiments.result\n"
            "c = depth_scale_curve('tanh', [1.0, 2.0]); print(c.xi_c[0] > 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
