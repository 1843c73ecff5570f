"""theory.chain against independent oracles: torch.autograd, plain-Python math, repeated
multiplication in each float format, and Monte Carlo."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradhealth.errors import ParameterError
from gradhealth.theory.activations import activation_names
from gradhealth.theory.chain import (
    FLOAT_LIMITS,
    bumps,
    crossing_depth,
    deep_linear,
    power_limits,
    power_table,
    scalar_chain,
    slope_bound,
    textbook_numbers,
    weight_claim,
)

TORCH = {
    "linear": lambda x: x, "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf,
    "hard_tanh": F.hardtanh, "selu": F.selu, "gelu": F.gelu, "swish": F.silu,
    "softplus": F.softplus,
}


def torch_chain(phi, w, b, x):
    """Output, dy/dx, dy/dw_l and dy/db_l per sample, by torch.autograd in float64."""
    n, L = len(x), len(w)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    W = torch.tensor(np.tile(w, (n, 1)), dtype=torch.float64, requires_grad=True)  # per-sample copies
    B = torch.tensor(np.tile(b, (n, 1)), dtype=torch.float64, requires_grad=True)
    a, outs = xt, []
    for l in range(L):
        a = phi(W[:, l] * a + B[:, l])
        outs.append(a)
    gx, gw, gb = torch.autograd.grad(a.sum(), (xt, W, B))
    return (torch.stack(outs).detach().numpy(), gx.numpy(), gw.numpy().T, gb.numpy().T)


# ------------------------------------------------------------------ scalar chains vs autograd

@pytest.mark.parametrize("name", sorted(TORCH))
def test_chain_matches_autograd_per_layer_weights(name):
    assert set(TORCH) == set(activation_names())
    rng = np.random.default_rng(1)
    L = 5
    w, b = rng.uniform(-2.5, 2.5, L), rng.uniform(-1, 1, L)
    x = rng.uniform(-2, 2, 300)
    res = scalar_chain(name, list(w), bias=list(b), x=x)
    outs, gx, gw, gb = torch_chain(TORCH[name], w, b, x)
    np.testing.assert_allclose(res.outputs, outs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.slopes[-1], gx, rtol=1e-10, atol=1e-13)
    dw, db = res.param_grads()
    np.testing.assert_allclose(dw, gw, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(db, gb, rtol=1e-10, atol=1e-13)
    # every depth's slope, too: dy_l/dx is the depth-l chain's derivative
    for l in (1, 3):
        _, gxl, _, _ = torch_chain(TORCH[name], w[:l], b[:l], x)
        np.testing.assert_allclose(res.slopes[l - 1], gxl, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_shared_weight_chain_matches_autograd(name):
    x = np.linspace(-1, 1, 201)
    res = scalar_chain(name, 8.0, 3, 0.3, x=x)
    outs, gx, gw, gb = torch_chain(TORCH[name], np.full(3, 8.0), np.full(3, 0.3), x)
    np.testing.assert_allclose(res.outputs, outs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.slopes[-1], gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.param_grads()[0], gw, rtol=1e-10, atol=1e-12)


def test_custom_callable_with_derivative():
    x = np.linspace(-3, 3, 101)
    res = scalar_chain(np.sin, [1.5, -2.0, 0.7], bias=[0.1, 0.2, 0.3], x=x, derivative=np.cos)
    outs, gx, gw, _ = torch_chain(torch.sin, np.array([1.5, -2.0, 0.7]), np.array([0.1, 0.2, 0.3]), x)
    np.testing.assert_allclose(res.outputs, outs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.slopes[-1], gx, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.param_grads()[0], gw, rtol=1e-10, atol=1e-13)


def test_factors_multiply_to_the_gradient_and_match_autograd():
    w, b = [1.3, -0.8, 2.0, 0.5], [0.2, -0.1, 0.4, 0.0]
    res = scalar_chain("tanh", w, bias=b, points=11)
    f = res.factors(0.37)
    _, gx, gw, gb = torch_chain(torch.tanh, np.array(w), np.array(b), np.array([0.37]))
    np.testing.assert_allclose(f.grad_w, gw[:, 0], rtol=1e-12)
    np.testing.assert_allclose(f.grad_b, gb[:, 0], rtol=1e-12)
    assert f.dy_dx == pytest.approx(gx[0], rel=1e-12)
    for k in range(1, 5):
        terms = f.terms(k)
        assert len(terms) == 2 * (4 - k) + 3
        assert math.prod(t.value for t in terms) == pytest.approx(f.grad_w[k - 1], rel=1e-12)
    names = [t.name for t in f.terms(1)]
    assert names == ["dJ/dy", "dy/dz4", "dz4/da3", "da3/dz3", "dz3/da2", "da2/dz2", "dz2/da1",
                     "da1/dz1", "dz1/dw1"]
    d = f.to_dict()
    assert len(d["layers"]) == 4 and d["dJ_dw1_factors"][-1]["meaning"] == "x"
    assert d["layers"][0]["smallest_factor"] == vars(f.smallest(1))
    assert "factors" not in d["layers"][0] and len(f.to_dict(all_terms=True)["layers"][3]["factors"]) == 3


def test_factor_breakdown_names_the_saturated_sigmoid():
    # the usual two-layer derivation: z2 = 5 makes dy/dz2 = sigmoid'(5) ~ 0.0066 the small factor
    f = scalar_chain("sigmoid", [0.0, 10.0], bias=[0.0, 0.0], x=[1.0]).factors(1.0)
    assert f.z[1] == pytest.approx(5.0)
    s = f.smallest(1)
    assert s.name == "dy/dz2" and s.meaning == "sigmoid'(z2)"
    assert s.value == pytest.approx(0.006648056670790033, rel=1e-12)
    expected = 1.0 * s.value * 10.0 * 0.25 * 1.0  # dJ/dy * dy/dz2 * dz2/da1 * da1/dz1 * dz1/dw1
    assert f.grad_w[0] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ textbook numbers (plain math oracle)

def py_chain(phi, dphi, w, b, x):
    """y and dy/dx of a scalar chain with Python floats and the math module (no NumPy)."""
    a, s = x, 1.0
    for wl, bl in zip(w, b):
        z = wl * a + bl
        a, s = phi(z), s * wl * dphi(z)
    return a, s


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


PY = {
    "relu": (lambda z: max(z, 0.0), lambda z: 1.0 if z > 0 else 0.0),
    "tanh": (math.tanh, lambda z: 1.0 - math.tanh(z) ** 2),
    "sigmoid": (_sig, lambda z: _sig(z) * (1.0 - _sig(z))),
}


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_w8_chains_depths_1_to_3(name):
    x = np.linspace(-1, 1, 1001)
    res = scalar_chain(name, 8.0, 3)
    phi, dphi = PY[name]
    for l in (1, 2, 3):
        ref = [py_chain(phi, dphi, [8.0] * l, [0.0] * l, float(xi)) for xi in x]
        np.testing.assert_allclose(res.outputs[l - 1], [r[0] for r in ref], rtol=1e-12, atol=1e-15)
        # 1 - tanh(z)**2 cancels for |z| ~ 8: a last-bit difference in tanh shows at 1e-10
        np.testing.assert_allclose(res.slopes[l - 1], [r[1] for r in ref], rtol=1e-9, atol=1e-12)
        assert res.max_slope[l - 1] == pytest.approx(max(abs(r[1]) for r in ref), rel=1e-12)
    if name in ("relu", "tanh"):  # 8, 64, 512: one factor of w = 8 per layer
        np.testing.assert_allclose(res.max_slope, [8.0, 64.0, 512.0], rtol=1e-12)
    else:  # sigmoid with b = 0 flattens: 2, then smaller and smaller
        assert res.max_slope[0] == pytest.approx(2.0)
        assert res.max_slope[0] > res.max_slope[1] > res.max_slope[2]
        assert res.outputs[2].min() > 0.5  # pushed towards 1


def test_sigmoid_with_biases_minus_w_over_2_steepens():
    w, L = 8.0, 8
    res = scalar_chain("sigmoid", w, bias=[0.0] + [-w / 2] * (L - 1))
    assert np.all(np.diff(res.max_slope) > 0)
    np.testing.assert_allclose(res.max_slope, (w / 4) ** np.arange(1, L + 1), rtol=1e-12)
    assert np.all(res.argmax_x == 0.0)
    y, s = py_chain(*PY["sigmoid"], [w] * 3, [0.0, -4.0, -4.0], 0.0)
    assert (y, s) == (pytest.approx(0.5), pytest.approx(8.0))


def test_relu_20_layers_w_2_34():
    res = scalar_chain("relu", 2.34, 20, x=[1.0])
    assert res.outputs[-1, 0] == pytest.approx(2.34 ** 20, rel=1e-13)
    assert res.outputs[-1, 0] == pytest.approx(24227976.748623, rel=1e-12)
    assert res.slopes[-1, 0] == pytest.approx(2.34 ** 20, rel=1e-13)
    dw, _ = res.param_grads()
    # dy/dw_k = 2.34**(20-k) * a_{k-1} = 2.34**19 for every layer at x = 1
    np.testing.assert_allclose(dw[:, 0], 2.34 ** 19, rtol=1e-12)


def test_bumps_network_value_derivative_and_steep_slopes():
    x = np.linspace(-0.5, 0.5, 20001)
    y, d = bumps(x)
    xt = torch.tensor(x, requires_grad=True, dtype=torch.float64)
    yt = torch.tanh(5 * torch.tanh(40 * xt - 5) - 5 * torch.tanh(40 * xt) + 5 * torch.tanh(40 * xt + 5))
    (gt,) = torch.autograd.grad(yt.sum(), xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d, gt.numpy(), rtol=1e-10, atol=1e-12)
    a = np.abs(d)
    peaks = np.flatnonzero((a[1:-1] > a[:-2]) & (a[1:-1] >= a[2:]) & (a[1:-1] > 100)) + 1
    assert len(peaks) == 3  # three cliffs, near x = -0.125, 0, 0.125
    np.testing.assert_allclose(np.sort(x[peaks]), [-0.125, 0.0, 0.125], atol=0.01)
    assert 190 < a.max() < 200.5 and np.abs(y).max() < 1


def test_textbook_numbers():
    t = {r["expr"]: r["value"] for r in textbook_numbers()}
    assert t["0.6**3"] == pytest.approx(0.216)
    assert t["0.6**15"] == pytest.approx(4.70184984576e-4, rel=1e-10)
    assert t["1.6**15"] == pytest.approx(1152.921504606847, rel=1e-12)
    assert t["2.34**20"] == pytest.approx(math.exp(20 * math.log(2.34)), rel=1e-12)
    s5 = 1 / (1 + math.exp(-5))
    assert t["sigmoid'(5)"] == pytest.approx(s5 * (1 - s5), rel=1e-12)
    tab = power_table(0.6, 15)
    assert tab.values[2] == pytest.approx(0.216) and tab.values[14] == pytest.approx(0.6 ** 15)
    assert power_table(1.6, 15).values[-1] == pytest.approx(1152.92, abs=0.01)
    assert "0.000470185" in tab.to_markdown([15])


# ------------------------------------------------------------------ overflow is reported, not hidden

def test_overflow_reported_with_depth_and_no_runtime_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = scalar_chain("relu", 8.0, 400, x=[1.0, -1.0, 0.5])
        t = scalar_chain("tanh", 8.0, 400)
        g = scalar_chain("gelu", 1e200, 3)
        s = scalar_chain("sigmoid", [1e300, 1e300, 0.0], x=[1.0])
        res.param_grads()
    first = math.floor(math.log(np.finfo(float).max) / math.log(8)) + 1  # 8**l > max at l = 342
    assert res.output_overflow_depth == first == 342
    assert res.slope_overflow_depth == first
    assert np.isinf(res.outputs[first - 1, 0]) and np.isfinite(res.outputs[first - 2, 0])
    assert np.isinf(res.max_slope[first - 1]) and res.max_slope[first - 2] == pytest.approx(8.0 ** 341)
    assert res.outputs[-1, 1] == 0.0  # the dead side stays exactly 0
    assert t.output_overflow_depth is None and t.slope_overflow_depth == 342
    assert g.slope_overflow_depth is not None or g.output_overflow_depth is not None
    assert s.output_overflow_depth is None  # sigmoid saturates to exactly 1, no overflow
    d = res.to_dict(arrays=False)
    assert d["output_overflow_depth"] == 342


# ------------------------------------------------------------------ float formats

def _repeated(w, dtype, max_depth):
    """|w**l| for l = 1..max_depth by multiplying one layer at a time in ``dtype``."""
    out = []
    if dtype == "bfloat16":
        wt, p = torch.tensor(w, dtype=torch.bfloat16), torch.tensor(1.0, dtype=torch.bfloat16)
        for _ in range(max_depth):
            p = p * wt
            out.append(abs(float(p)))
        return out
    t = np.dtype(dtype).type
    wt, p = t(w), t(1)
    with np.errstate(all="ignore"):
        for _ in range(max_depth):
            p = p * wt
            out.append(abs(float(p)))
    return out


def _first(vals, cond):
    return next((i + 1 for i, v in enumerate(vals) if cond(v)), None)


def test_bfloat16_limits_match_torch():
    fi = torch.finfo(torch.bfloat16)
    lim = FLOAT_LIMITS["bfloat16"]
    assert lim.max == float(fi.max) and lim.tiny == float(fi.tiny)
    assert lim.smallest_subnormal == float(torch.tensor(2.0 ** -133, dtype=torch.bfloat16))
    assert float(torch.tensor(2.0 ** -134, dtype=torch.bfloat16)) == 0.0
    # max + ulp(max)/2 = 2**128 - 2**119 is a tie and rounds to inf; one float32 step below does not
    thr = torch.tensor(2.0 ** 128 - 2.0 ** 119, dtype=torch.float32)
    assert math.isinf(float(thr.to(torch.bfloat16)))
    below = torch.nextafter(thr, torch.tensor(0.0))
    assert float(below.to(torch.bfloat16)) == lim.max
    assert lim.log2_overflow == pytest.approx(math.log2(2.0 ** 128 - 2.0 ** 119), abs=1e-12)
    assert FLOAT_LIMITS["float16"].log2_overflow == pytest.approx(math.log2(65520.0), abs=1e-12)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(65520.0)) and np.float16(65519.0) == 65504
    assert lim.max == pytest.approx(3.3895e38, rel=1e-4)
    assert lim.smallest_subnormal == pytest.approx(9.18e-41, rel=1e-3)
    for w in (0.6, 2.34, 0.9, 1e-3):
        assert power_limits(w, "bfloat16").stored_weight == float(torch.tensor(w, dtype=torch.bfloat16))


EXACT_WS = (0.6, 1.6, 2.34, 0.5, 0.3, 0.25, 2.0, 1.1, 0.7, 3.0, 0.1, -0.6, -1.6)


@pytest.mark.parametrize("dtype", list(FLOAT_LIMITS))
def test_power_limits_match_repeated_multiplication(dtype):
    lim = FLOAT_LIMITS[dtype]
    max_depth = 8000 if dtype == "float64" else 1500
    for w in EXACT_WS:
        p = power_limits(w, dtype)
        vals = _repeated(w, dtype, max_depth)
        assert _first(vals, lambda v: v < lim.tiny) == p.subnormal_depth, (w, p)
        assert _first(vals, math.isinf) == p.overflow_depth, (w, p)
        reached = _first(vals, lambda v: v == 0.0)
        if abs(p.stored_weight) <= 0.5:
            assert p.repeated_reaches_zero and reached == p.zero_depth, (w, p)
        elif abs(p.stored_weight) < 1:
            # round-to-nearest: s * |w| rounds back to s, the product stalls above zero
            assert not p.repeated_reaches_zero and reached is None and p.zero_depth < max_depth
            assert 0 < vals[-1] < 100 * lim.smallest_subnormal


def test_power_limits_near_one_within_accumulated_rounding():
    # hundreds of roundings in a row: the crossing moves by a few layers at most
    for dtype, w in (("float16", 0.99), ("float16", 1.01), ("bfloat16", 0.9), ("float32", 0.9)):
        p = power_limits(w, dtype)
        lim = FLOAT_LIMITS[dtype]
        vals = _repeated(w, dtype, 3000)
        if w < 1:
            got, want = _first(vals, lambda v, tiny=lim.tiny: v < tiny), p.subnormal_depth
        else:
            got, want = _first(vals, math.isinf), p.overflow_depth
        assert abs(got - want) <= max(1, 0.005 * want), (dtype, w, got, want)


def test_power_limits_edges():
    assert power_limits(1.0, "float16").overflow_depth is None
    assert power_limits(1.0, "float16").zero_depth is None
    z = power_limits(0.0, "float32")
    assert z.zero_depth == 1 and z.subnormal_depth == 1
    assert power_limits(1e6, "float16").overflow_depth == 1  # 1e6 is already inf in float16
    assert power_limits(2.0, "float16").overflow_depth == 16  # 2**16 = 65536 >= 65520 rounds to inf
    assert power_limits(0.5, "float16").zero_depth == 25  # 2**-25 is a tie, rounds to even: 0
    with pytest.raises(ParameterError, match="dtype"):
        power_limits(0.5, "float8")


def test_crossing_depth():
    assert crossing_depth(0.6, 1e-3) == 14 and 0.6 ** 13 > 1e-3 >= 0.6 ** 14
    assert crossing_depth(1.6, 1e3) == 15 and 1.6 ** 14 < 1e3 <= 1.6 ** 15
    assert crossing_depth(0.5, 0.125) == 3  # exact power: the tie counts as crossed
    assert crossing_depth(2.0, 8.0) == 3
    assert crossing_depth(0.6, 10.0) is None and crossing_depth(1.6, 0.1) is None
    assert crossing_depth(-2.0, 1024.0) == 10
    with pytest.raises(ParameterError):
        crossing_depth(0.6, 0.0)


# ------------------------------------------------------------------ deep linear networks

@pytest.mark.parametrize("a", [1.5, 0.5])
def test_deep_linear_identity_exact(a):
    L = 30
    r = deep_linear(L, 16, init="identity", scale=a)
    ls = np.arange(L + 1)
    np.testing.assert_allclose(r.act_norm[0], a ** ls, rtol=1e-12)
    np.testing.assert_allclose(r.grad_norm[0], a ** (L - ls), rtol=1e-12)
    np.testing.assert_allclose(r.weight_grad_norm[0], a ** (L - 1), rtol=1e-12)
    np.testing.assert_allclose(r.predicted_act_norm, a ** ls)


def test_deep_linear_identity_overflow_is_reported_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = deep_linear(2000, 4, init="identity", scale=1.5)
    big = math.log(np.finfo(float).max) / math.log(1.5)  # 1.5**l passes float64 max at l ~ 1751
    # |x_i| <= 1 and max |x_i| >= 1/2 (unit vector, width 4): overflow within a layer or two of that
    assert big < r.overflow_layer <= big + math.log(2) / math.log(1.5) + 1
    ok = slice(0, r.overflow_layer)
    np.testing.assert_allclose(r.act_norm[0, ok], 1.5 ** np.arange(r.overflow_layer), rtol=1e-10)
    assert not np.isfinite(r.act_norm[0, r.overflow_layer:]).any()  # inf, then inf * 0 = nan
    assert np.isinf(r.predicted_act_norm[-1])
    assert r.to_dict()["overflow_layer"] == r.overflow_layer


def test_deep_linear_gaussian_mean_and_lognormal_spread():
    L, n, T = 10, 16, 4000
    r = deep_linear(L, n, init="gaussian", sigma_w=1.2, trials=T, seed=3)
    sq = r.act_norm ** 2 / r.predicted_act_norm ** 2  # E = 1 exactly at every depth
    se = sq.std(0) / math.sqrt(T)
    assert np.all(np.abs(sq.mean(0)[1:] - 1) < 5 * se[1:])
    logs = np.log(r.act_norm)
    np.testing.assert_allclose(logs.mean(0), r.act_log_mean, atol=0.05)
    np.testing.assert_allclose(logs.std(0)[1:], r.act_log_std[1:], rtol=0.06)
    assert r.act_log_std[-1] == pytest.approx(math.sqrt(L / (2 * n)), rel=0.1)  # the large-n rule
    glogs = np.log(r.grad_norm)
    np.testing.assert_allclose(glogs.mean(0), r.grad_log_mean, atol=0.05)
    wg = (r.weight_grad_norm ** 2).mean(0) / r.predicted_weight_grad_norm ** 2
    assert np.all(np.abs(wg - 1) < 0.2)
    # the band holds about 80% of the nets
    z = 1.2816
    inside = (logs[:, -1] > r.act_log_mean[-1] - z * r.act_log_std[-1]) & \
             (logs[:, -1] < r.act_log_mean[-1] + z * r.act_log_std[-1])
    assert 0.75 < inside.mean() < 0.85


def test_deep_linear_backprop_matches_autograd():
    r = deep_linear(6, 5, init="gaussian", trials=1, seed=7)
    rng = np.random.default_rng(7)  # replay the documented draw order: x, g, then W_1..W_L
    x = rng.standard_normal((1, 5))
    x /= np.linalg.norm(x)
    g = rng.standard_normal((1, 5))
    g /= np.linalg.norm(g)
    Ws = [torch.tensor(rng.standard_normal((1, 5, 5))[0] / math.sqrt(5), requires_grad=True)
          for _ in range(6)]
    hs = [torch.tensor(x[0], requires_grad=True)]
    for W in Ws:
        hs.append(W @ hs[-1])
    for h in hs:
        h.retain_grad()
    (hs[-1] @ torch.tensor(g[0])).backward()
    np.testing.assert_allclose(r.act_norm[0], [float(h.detach().norm()) for h in hs], rtol=1e-12)
    np.testing.assert_allclose(r.grad_norm[0], [float(h.grad.norm()) for h in hs], rtol=1e-12)
    np.testing.assert_allclose(r.weight_grad_norm[0], [float(W.grad.norm()) for W in Ws], rtol=1e-12)


# ------------------------------------------------------------------ the w = 0.7 claim

def test_weight_07_cannot_explode_a_scalar_chain_but_explodes_a_matrix():
    c = weight_claim(0.7, 50, 8)
    ls = np.arange(1, 51)
    # the bounds are attained (tanh at x = 0, sigmoid at the fixed point 1/2), never exceeded
    np.testing.assert_allclose(c.tanh_max_slope, 0.7 ** ls, rtol=1e-9)
    np.testing.assert_allclose(c.sigmoid_max_slope, 0.175 ** ls, rtol=1e-6)
    assert c.tanh_max_slope[-1] == pytest.approx(1.8e-8, rel=0.01)
    assert c.sigmoid_max_slope[-1] == pytest.approx(1.42e-38, rel=0.01)
    assert c.matrix_spectral_radius == pytest.approx(5.6)
    np.testing.assert_allclose(c.matrix_gain, 5.6 ** ls, rtol=1e-9)
    assert 1 < c.gaussian_spectral_radius < 3 and c.gaussian_gain[-1] > 1e6
    assert c.min_width_all == 2 and c.min_width_gaussian == 3
    assert "can only vanish" in c.verdict()


def test_weight_07_bound_holds_for_any_biases_and_inputs():
    # a scalar RNN h_t = tanh(0.7 h_{t-1} + u x_t) is a chain with per-step biases u x_t
    rng = np.random.default_rng(0)
    T = 200
    for act, bound in (("tanh", 0.7 ** T), ("sigmoid", 0.175 ** T)):
        for _ in range(5):
            inputs = list(rng.uniform(-5, 5, T))
            r = scalar_chain(act, 0.7, bias=inputs, x=np.linspace(-10, 10, 201))
            assert r.max_slope[-1] <= bound * (1 + 1e-9)
            assert np.all(r.max_slope <= slope_bound(act, 0.7, 1) ** np.arange(1, T + 1) * (1 + 1e-9))
    assert slope_bound("sigmoid", 0.7, 50) == pytest.approx(0.175 ** 50)
    assert slope_bound("gelu", 1.0, 1) == pytest.approx(1.1289, abs=1e-3)


# ------------------------------------------------------------------ input checks

@pytest.mark.parametrize("kwargs, param", [
    (dict(depth=0), "'depth'"),
    (dict(depth=2.5), "'depth'"),
    (dict(weight=math.nan, depth=3), "'weight'"),
    (dict(weight=[1.0, math.inf], depth=2), "'weight\\[1\\]'"),
    (dict(weight=[1.0, 2.0], depth=3), "'weight'"),
    (dict(bias=[0.0, 0.0, 0.0], weight=[1.0, 2.0]), "'bias'"),
    (dict(weight=1.0), "'depth'"),
    (dict(depth=3, x_range=(1.0, 1.0)), "'x_range'"),
    (dict(depth=3, x_range=(1.0, -1.0)), "'x_range'"),
    (dict(depth=3, points=1), "'points'"),
    (dict(depth=3, x=[0.0, math.nan]), "'x'"),
    (dict(activation="tahn", depth=3), "'activation'"),
])
def test_bad_input_names_the_parameter(kwargs, param):
    with pytest.raises(ParameterError, match=param):
        scalar_chain(**kwargs)


def test_chain_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from gradhealth.theory.chain import scalar_chain\n"
            "print(scalar_chain('tanh', 8, 3).max_slope[-1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "512.0"
