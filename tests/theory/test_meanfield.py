"""Mean-field theory against independent oracles.

Oracles: scipy.integrate.quad / dblquad (adaptive, independent of our segmented rule), the
closed forms (arc-cosine and arcsine kernels) against our quadrature, textbook values, fixed-point
identities checked by finite differences, and Monte Carlo of real random networks in NumPy.
"""

import math

import numpy as np
import pytest
from scipy import integrate

from gradhealth.errors import ParameterError
from gradhealth.theory import _quadrature as quad
from gradhealth.theory.activations import get_activation
from gradhealth.theory.meanfield import (
    MeanFieldResult,
    analyze,
    chi_1,
    correlation_map,
    kernel_for,
    length_map,
    q_star,
)

SMOOTH = ["tanh", "sigmoid", "erf", "gelu", "swish", "softplus"]
KINKED = {"hard_tanh": (-1.0, 1.0), "selu": (0.0,), "elu": (0.0,), "relu": (0.0,),
          "leaky_relu": (0.0,)}


def _gauss(f, q, kinks=()):
    """E[f(sqrt(q) z)] by adaptive quadrature, split at the kinks."""
    r = math.sqrt(q)
    pts = sorted({0.0, *[k / r for k in kinks if abs(k / r) < 30]})
    edges = [-np.inf, *pts, np.inf]
    dens = lambda z: f(r * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    return sum(integrate.quad(dens, a, b, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
               for a, b in zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("name", SMOOTH + sorted(KINKED))
@pytest.mark.parametrize("q", [1e-3, 0.3, 1.0, 4.0, 30.0])
def test_one_dimensional_expectations_match_scipy_quad(name, q):
    act = get_activation(name)
    k = kernel_for(name, method="quadrature")
    kinks = KINKED.get(name, ())
    fn = lambda u: float(act(np.array(u)))  # noqa: E731
    dfn = lambda u: float(act.grad(np.array(u)))  # noqa: E731
    v = _gauss(lambda u: fn(u) ** 2, q, kinks)
    d = _gauss(lambda u: dfn(u) ** 2, q, kinks)
    np.testing.assert_allclose(k.V(q), v, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(k.D(q), d, rtol=1e-10)
    # V'(q) (Stein form) against a central difference of the independently integrated V
    h = 1e-4 * q
    dv_fd = (_gauss(lambda u: fn(u) ** 2, q + h, kinks) - _gauss(lambda u: fn(u) ** 2, q - h, kinks)) / (2 * h)
    np.testing.assert_allclose(k.dV(q), dv_fd, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name,q,c", [("tanh", 0.7, 0.3), ("tanh", 3.0, 0.95), ("gelu", 1.5, -0.4)])
def test_bivariate_expectations_match_scipy_dblquad(name, q, c):
    act = get_activation(name)
    k = kernel_for(name, method="quadrature")
    s, r = math.sqrt(1 - c * c), math.sqrt(q)
    lim = 9.0

    def dbl(f):
        g = lambda z2, z1: (f(r * z1) * f(r * (c * z1 + s * z2))  # noqa: E731
                            * math.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi))
        return integrate.dblquad(g, -lim, lim, -lim, lim, epsabs=1e-13, epsrel=1e-11)[0]

    fn = lambda u: float(act(np.array(u)))  # noqa: E731
    dfn = lambda u: float(act.grad(np.array(u)))  # noqa: E731
    np.testing.assert_allclose(k.C(q, c), dbl(fn), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(k.Cd(q, c), dbl(dfn), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("q,c", [(2.0, 0.8), (0.5, -0.3), (9.0, 0.99)])
def test_hard_tanh_bivariate_against_semi_analytic_oracle(q, c):
    """hard_tanh has kinks, where dblquad struggles; condition on z1 instead.

    Given z1, u2 ~ N(m, v) with m = sqrt(q) c z1, v = q (1 - c^2), and E[clip(u2)] and
    P(|u2| < 1) are closed forms (truncated normal); the outer integral is scipy.quad split at
    the kinks z1 = +-1/sqrt(q).
    """
    from scipy.stats import norm

    k = kernel_for("hard_tanh", method="quadrature")
    r, sd = math.sqrt(q), math.sqrt(q * (1 - c * c))

    def inner_clip(m):
        a, b = (-1 - m) / sd, (1 - m) / sd
        mid = m * (norm.cdf(b) - norm.cdf(a)) + sd * (norm.pdf(a) - norm.pdf(b))
        return -norm.cdf(a) + norm.sf(b) + mid

    def inner_box(m):
        return norm.cdf((1 - m) / sd) - norm.cdf((-1 - m) / sd)

    pts = [-np.inf, -1 / r, 1 / r, np.inf]

    def outer(f):
        return sum(integrate.quad(f, a, b, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
                   for a, b in zip(pts[:-1], pts[1:]))

    dens = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    C = outer(lambda z: min(max(r * z, -1.0), 1.0) * inner_clip(r * c * z) * dens(z))
    Cd = outer(lambda z: float(abs(r * z) < 1) * inner_box(r * c * z) * dens(z))
    np.testing.assert_allclose(k.C(q, c), C, rtol=1e-9)
    np.testing.assert_allclose(k.Cd(q, c), Cd, rtol=1e-9)


@pytest.mark.parametrize("name,params", [("relu", {}), ("leaky_relu", {"alpha": 0.2}), ("erf", {}),
                                         ("linear", {})])
def test_closed_forms_match_quadrature(name, params):
    act = get_activation(name, **params)
    closed = kernel_for(act)
    numeric = kernel_for(act, method="quadrature")
    assert closed.method == "closed form" and numeric.method == "quadrature"
    qs = np.array([1e-4, 0.2, 1.0, 3.0, 20.0])
    for fn in ("V", "dV", "D"):
        np.testing.assert_allclose(getattr(closed, fn)(qs), getattr(numeric, fn)(qs), rtol=1e-11,
                                   err_msg=fn)
    for c in (-0.9, -0.3, 0.0, 0.5, 0.99, 1.0):
        for fn in ("C", "Cd"):
            np.testing.assert_allclose(getattr(closed, fn)(qs, c), getattr(numeric, fn)(qs, c),
                                       rtol=1e-10, atol=1e-14, err_msg=f"{fn} c={c}")


def test_a_user_function_named_relu_is_not_trusted_blindly():
    def relu(x):  # same name, different function: must not get the relu closed form
        return np.maximum(x, 0.0) ** 1.5

    relu.derivative = lambda x: 1.5 * np.sqrt(np.maximum(x, 0.0))
    assert kernel_for(relu).method == "quadrature"


def test_textbook_values():
    # tanh at sigma_b2 = 0: ordered below sigma_w2 = 1 with q* = 0, chi_1 = sigma_w2 * tanh'(0)^2
    r = analyze("tanh", 0.8, 0.0)
    assert r.q_star == 0.0 and r.chi_1 == pytest.approx(0.8, rel=1e-12) and r.phase == "ordered"
    assert r.c_star == 1.0 and r.chi_c == pytest.approx(0.8, rel=1e-12)
    assert r.xi_c == pytest.approx(-1 / math.log(0.8), rel=1e-10)
    # relu: chi_1 = sigma_w2 / 2 whatever q*, q* = sigma_b2 / (1 - sigma_w2 / 2)
    r = analyze("relu", 1.5, 0.1)
    assert (r.q_star, r.chi_1, r.phase) == (pytest.approx(0.4), pytest.approx(0.75), "ordered")
    assert r.trainable_depth == pytest.approx(6 * r.xi_c)
    # He init: lengths preserved, chi_1 exactly 1
    r = analyze("relu", 2.0, 0.0)
    assert r.chi_1 == 1.0 and r.phase == "critical" and r.q_star == 1.0 and math.isinf(r.xi_q)
    # linear: q* = sigma_b2 / (1 - sigma_w2), chi_1 = sigma_w2
    r = analyze("linear", 0.5, 0.1)
    assert r.q_star == pytest.approx(0.2) and r.chi_1 == pytest.approx(0.5)
    # erf: chi_1 = sigma_w2 * 4/pi / sqrt(1 + 4 q*)  (closed form), and dropout scales it by 1/rho
    r = analyze("erf", 1.2, 0.05, dropout_keep=0.8)
    assert r.chi_1 == pytest.approx(1.2 / 0.8 * 4 / math.pi / math.sqrt(1 + 4 * r.q_star), rel=1e-12)


def test_no_fixed_point_is_said_not_hidden():
    r = analyze("relu", 3.0, 0.1)
    assert math.isinf(r.q_star) and math.isnan(r.xi_q) and r.chi_1 == pytest.approx(1.5)
    # relu correlations still converge to 1 (only polynomially): c* = 1, chi_c = 1
    assert r.c_star == 1.0 and r.chi_c == 1.0 and math.isinf(r.xi_c) and r.phase == "chaotic"
    assert "q* = inf" in r.interpretation()
    assert math.isinf(q_star("linear", 1.0, 0.1))
    r = analyze("gelu", 3.0, 0.1)  # grows like relu: no finite fixed point
    assert math.isinf(r.q_star) and r.chi_1 == pytest.approx(1.5, rel=1e-9)


@pytest.mark.parametrize("name,sw2,sb2,rho", [("tanh", 1.5, 0.05, 1.0), ("tanh", 3.0, 0.1, 1.0),
                                              ("tanh", 3.0, 0.0, 1.0), ("hard_tanh", 2.0, 0.2, 1.0),
                                              ("selu", 1.3, 0.1, 1.0), ("sigmoid", 8.0, 0.5, 1.0),
                                              ("erf", 2.0, 0.05, 0.7), ("tanh", 1.5, 0.05, 0.9),
                                              ("swish", 1.5, 0.3, 1.0)])
def test_fixed_points_and_slopes_are_consistent(name, sw2, sb2, rho):
    r = analyze(name, sw2, sb2, dropout_keep=rho)
    k = kernel_for(name)
    # q* is a fixed point of the length map; chi_q its slope (central difference)
    q = r.q_star
    assert float(length_map(name, q, sw2, sb2, dropout_keep=rho)) == pytest.approx(q, rel=1e-12, abs=1e-300)
    if q > 0:
        h = 1e-5 * q
        slope = (float(length_map(name, q + h, sw2, sb2, dropout_keep=rho))
                 - float(length_map(name, q - h, sw2, sb2, dropout_keep=rho))) / (2 * h)
        assert r.chi_q == pytest.approx(slope, rel=1e-7)
        assert r.xi_q == pytest.approx(-1 / math.log(abs(slope)), rel=1e-6)
    # chi_1 = sigma_w2 / rho * E[phi'^2] at q*
    assert r.chi_1 == pytest.approx(sw2 / rho * float(k.D(q)), rel=1e-12)
    # c* is a fixed point of the correlation map (taken at q = q*), chi_c its slope there
    cmap = lambda c: (sw2 * k.C(q, c) + sb2) / q  # noqa: E731
    assert float(cmap(r.c_star)) == pytest.approx(r.c_star, abs=1e-12)
    if r.c_star < 1:
        h = 1e-6
        assert r.chi_c == pytest.approx(float(cmap(r.c_star + h) - cmap(r.c_star - h)) / (2 * h), rel=1e-6)
        assert r.chi_c < 1
    else:
        assert r.chi_c == pytest.approx(r.chi_1, rel=1e-12)
    expected = "ordered" if r.chi_1 < 1 else "chaotic"
    assert r.phase == expected


def test_correlation_map_at_degenerate_fixed_points():
    # relu, q* = inf: the limiting map is the normalised arc-cosine kernel, with f(1) = 1
    c = np.array([0.0, 0.5, 1.0])
    k1 = (np.sqrt(1 - c * c) + (np.pi - np.arccos(c)) * c) / np.pi
    np.testing.assert_allclose(correlation_map("relu", c, 3.0, 0.1), k1, rtol=1e-12)
    # tanh, q* = 0 (ordered, no bias): the sigma_b2 -> 0+ limit, where sigma_b2 / q* -> 1 - sigma_w2
    # and tanh is linear: f(c) = 1 - sigma_w2 + sigma_w2 c; continuous with a tiny bias
    np.testing.assert_allclose(correlation_map("tanh", c, 0.5, 0.0), 0.5 + 0.5 * c, atol=1e-12)
    np.testing.assert_allclose(correlation_map("tanh", c, 0.5, 1e-9), 0.5 + 0.5 * c, atol=1e-8)
    assert correlation_map("tanh", 0.3, 0.5, 0.0).shape == ()


def test_dropout_makes_c_star_less_than_one_and_xi_c_finite():
    for sw2 in (0.8, 1.76, 3.0):
        r = analyze("tanh", sw2, 0.05, dropout_keep=0.9)
        assert r.c_star < 1 and math.isfinite(r.xi_c)
    # chi_1 carries sigma_w2 / rho; at the same q* the off-diagonal map does not
    base, drop = analyze("relu", 1.0, 0.1), analyze("relu", 1.0, 0.1, dropout_keep=0.5)
    assert drop.chi_1 == pytest.approx(2 * base.chi_1)


def test_ordered_and_chaotic_phases_of_tanh():
    ordered, chaotic = analyze("tanh", 1.2, 0.05), analyze("tanh", 3.0, 0.05)
    assert ordered.phase == "ordered" and ordered.c_star == 1.0
    assert chaotic.phase == "chaotic" and chaotic.c_star < 1.0 and chaotic.chi_1 > 1
    assert chaotic.xi_c < analyze("tanh", 2.0, 0.05).xi_c  # depth scale peaks at criticality


def test_to_dict_keys_and_frozen():
    r = analyze("tanh", 1.5, 0.05)
    assert isinstance(r, MeanFieldResult)
    assert list(r.to_dict()) == ["q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "phase",
                                 "trainable_depth"]
    with pytest.raises(AttributeError):
        r.q_star = 1.0
    assert chi_1("tanh", 1.5, 0.05) == pytest.approx(r.chi_1, rel=1e-12)


@pytest.mark.parametrize("kwargs,param", [
    (dict(activation="nope", sigma_w2=1.0, sigma_b2=0.0), "activation"),
    (dict(activation="tanh", sigma_w2=-1.0, sigma_b2=0.0), "sigma_w2"),
    (dict(activation="tanh", sigma_w2=float("nan"), sigma_b2=0.0), "sigma_w2"),
    (dict(activation="tanh", sigma_w2=1.0, sigma_b2=float("inf")), "sigma_b2"),
    (dict(activation="tanh", sigma_w2=1.0, sigma_b2=-0.1), "sigma_b2"),
    (dict(activation="tanh", sigma_w2=1.0, sigma_b2=0.0, dropout_keep=0.0), "dropout_keep"),
    (dict(activation="tanh", sigma_w2=1.0, sigma_b2=0.0, dropout_keep=1.5), "dropout_keep"),
    (dict(activation="tanh", sigma_w2=True, sigma_b2=0.0), "sigma_w2"),
])
def test_bad_input_raises_parameter_error(kwargs, param):
    act = kwargs.pop("activation")
    with pytest.raises(ParameterError) as info:
        analyze(act, **kwargs)
    assert info.value.param == param


def test_custom_callable_activation():
    with pytest.raises(ParameterError):  # a bare callable needs a derivative
        analyze(np.tanh, 1.5, 0.05)
    f = lambda x: np.tanh(x)  # noqa: E731
    f.derivative = lambda x: 1 - np.tanh(x) ** 2
    r = analyze(f, 1.5, 0.05)
    assert r.chi_1 == pytest.approx(analyze("tanh", 1.5, 0.05).chi_1, rel=1e-13)


# ---------------------------------------------------------------------------------------------
# Monte Carlo: real random networks (NumPy), width 1000.
# ---------------------------------------------------------------------------------------------

def _random_nets(name, sw2, sb2, *, width=1000, depth=10, nets=4, batch=32, c0=0.5, seed=0):
    """Mean q^l and c^l over ``nets`` random MLPs, and per-layer backprop norm ratios."""
    act = get_activation(name)
    rng = np.random.default_rng(seed)
    qs, cs, ratios = [], [], []
    for _ in range(nets):
        z1, z2 = rng.standard_normal((2, batch, width))
        h1, h2 = z1, c0 * z1 + math.sqrt(1 - c0 * c0) * z2        # q^0 = 1, c^0 = c0
        weights, pre = [], []
        q_l, c_l = [], []
        for _ in range(depth):
            W = rng.standard_normal((width, width)) * math.sqrt(sw2 / width)
            b = rng.standard_normal(width) * math.sqrt(sb2)
            weights.append(W)
            pre.append(h1)
            h1, h2 = act(h1) @ W.T + b, act(h2) @ W.T + b
            q1, q2 = np.mean(h1 ** 2), np.mean(h2 ** 2)
            q_l.append(0.5 * (q1 + q2))
            c_l.append(np.mean(h1 * h2) / math.sqrt(q1 * q2))
        delta = rng.standard_normal((batch, width))
        r = []
        for l in range(depth - 1, depth // 2, -1):                # layers near q*
            new = (delta @ weights[l]) * act.grad(pre[l])
            r.append(np.sum(new ** 2) / np.sum(delta ** 2))
            delta = new
        qs.append(q_l), cs.append(c_l), ratios.append(r)
    return np.mean(qs, axis=0), np.mean(cs, axis=0), np.array(ratios)


@pytest.mark.slow
@pytest.mark.parametrize("name,sw2,sb2", [("tanh", 1.5, 0.05), ("tanh", 2.5, 0.05), ("relu", 1.5, 0.1),
                                          ("erf", 3.0, 0.1)])
def test_random_networks_follow_the_maps(name, sw2, sb2):
    width, depth, nets = 1000, 10, 4
    q_mc, c_mc, ratios = _random_nets(name, sw2, sb2, width=width, depth=depth, nets=nets)
    r = analyze(name, sw2, sb2)
    # theory: iterate the length and correlation maps from q^0 = 1, c^0 = 0.5
    q, c, q_th, c_th = 1.0, 0.5, [], []
    for _ in range(depth):
        c = float(correlation_map(name, c, sw2, sb2, q=q))
        q = float(length_map(name, q, sw2, sb2))
        q_th.append(q), c_th.append(c)
    # Per layer, mean(h^2) over n units is chi-square-like: relative sd sqrt(2/n) = 4.5%, and the
    # error carries over to the next layer times chi_q, so it builds up over ~1/(1 - chi_q^2)
    # layers; nets are independent. Four standard deviations:
    build_up = min(depth, 1 / (1 - min(r.chi_q, 0.99) ** 2))
    tol_q = 4 * math.sqrt(2 / width) * math.sqrt(build_up / nets)
    np.testing.assert_allclose(q_mc, q_th, rtol=tol_q)
    # Correlations: sd of a sample correlation is <= 1/sqrt(n) = 3.2% per net and layer.
    np.testing.assert_allclose(c_mc, c_th, atol=4 / math.sqrt(width * nets))
    # chi_1: squared-norm ratio of backprop per layer; each has relative sd ~ sqrt(2/n), and we
    # average len(ratios) of them in log space.
    chi_mc = math.exp(np.mean(np.log(ratios)))
    tol_chi = 4 * math.sqrt(2 / width) / math.sqrt(ratios.size)
    assert chi_mc == pytest.approx(r.chi_1, rel=tol_chi)


def test_quadrature_rule_integrates_polynomials_exactly():
    # E[z^2k] = (2k - 1)!! : a check of the rule itself, independent of any activation
    for k, moment in [(0, 1.0), (1, 1.0), (2, 3.0), (4, 105.0)]:
        assert quad.expect(lambda u, k=k: u ** (2 * k), 1.0) == pytest.approx(moment, rel=1e-13)
    assert quad.expect_pair(lambda u: u, lambda u: u, 2.0, 0.3) == pytest.approx(0.6, rel=1e-13)
