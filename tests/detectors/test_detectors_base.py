"""Shared detector machinery against slow explicit computations."""

import copy
import math

import numpy as np
import pytest

import gradhealth.detectors as D
from gradhealth.detectors import LayerTable, StepStats


def slow_median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@pytest.mark.parametrize("seed", range(5))
def test_robust_center_scale_matches_explicit(seed):
    rng = np.random.default_rng(seed)
    xs = list(rng.standard_t(3, size=int(rng.integers(1, 40))))
    xs_with_nan = xs + [math.nan, math.inf]
    med, sig = D.robust_center_scale(xs_with_nan)
    m = slow_median(xs)
    assert med == pytest.approx(m)
    assert sig == pytest.approx(1.4826 * slow_median([abs(x - m) for x in xs]))


def test_robust_center_scale_empty():
    med, sig = D.robust_center_scale([math.nan])
    assert math.isnan(med) and math.isnan(sig)


@pytest.mark.parametrize("seed", range(5))
def test_theil_sen_matches_explicit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 15))
    x = np.arange(n, dtype=float)
    y = rng.normal(size=n) + 0.3 * x
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(n) for j in range(i + 1, n)]
    assert D.theil_sen_slope(x, y) == pytest.approx(slow_median(slopes))


def test_theil_sen_ignores_an_outlier_at_the_end():
    x = np.arange(12.0)
    y = 2.0 * x
    y[-1] = 500.0
    assert D.theil_sen_slope(x, y) == pytest.approx(2.0)


@pytest.mark.parametrize("g", [1.5, 0.5, 1.2])
def test_depth_trend_on_exact_geometric_series(g):
    # backward signal: value at layer l (input side l=0) is g**(L-1-l)
    L = 10
    v = np.array([g ** (L - 1 - l) for l in range(L)])
    tr = D.depth_trend(v)
    assert tr["growth_per_layer"] == pytest.approx(g)
    assert tr["gsc"] == pytest.approx(g ** (L - 1))
    assert tr["n"] == L


def test_depth_trend_needs_enough_points():
    assert D.depth_trend(np.array([1.0, 2.0, math.nan, 0.0, -1.0])) is None


def test_layer_table_forward_order_puts_unseen_last():
    t = LayerTable(("a", "b", "c"), ("Linear",) * 3, ("weight",) * 3, depth=(2, -1, 0))
    assert list(t.forward_order()) == [2, 0, 1]


def test_stepstats_defaults_are_not_measured():
    s = StepStats.empty(3, LayerTable.simple(4))
    assert np.isnan(s.grad_norm).all() and (s.nonfinite_grad == -1).all()
    assert StepStats(step=0, layers=LayerTable.simple(1), loss=math.nan).loss_nonfinite


def test_safe_text_escapes_control_characters():
    assert D.safe_text("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert D.safe_text("enc.layers.0") == "enc.layers.0"


def _sequence(n=40):
    layers = LayerTable.simple(6)
    rng = np.random.default_rng(0)
    out = []
    for t in range(n):
        g = np.exp(rng.normal(size=6))
        out.append(StepStats(step=t, layers=layers, loss=2.0 / (1 + t) + 0.01 * rng.random(),
                             global_grad_norm=float(np.sqrt((g ** 2).sum())), grad_norm=g,
                             nonfinite_grad=np.zeros(6, int), out_grad_rms=3.0 ** np.arange(6)[::-1],
                             update_ratio=np.full(6, 1e-3), dead_frac=np.full(6, 0.1),
                             sat_frac=np.full(6, 0.1)))
    return out


@pytest.mark.parametrize("make", [D.nonfinite, D.exploding_vanishing, D.update_ratio, D.grad_spikes,
                                  D.loss_spikes, D.dead_units, D.saturation, D.default_detectors])
def test_detectors_are_pure(make):
    det = make()
    state = det.init()
    for s in _sequence():
        before = copy.deepcopy(state)
        ev1, new1 = det.update(s, state)
        assert _same(state, before), "update mutated its input state"
        ev2, new2 = det.update(s, state)   # same input, same output
        assert [e.to_dict() for e in ev1] == [e.to_dict() for e in ev2]
        state = new1


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_chain_concatenates_events_in_order():
    seq = _sequence(3)
    det = D.chain(D.exploding_vanishing(), D.nonfinite())
    events = D.run_detectors(det, seq)
    assert [e.kind for e in events] == ["exploding"]
    assert events[0].step == 0


def test_one_raising_detector_never_silences_the_others():
    # oracle: the nonfinite detector run alone over the same steps
    t = LayerTable(("a", "b"), ("Linear",) * 2, ("weight",) * 2)
    calls = {"n": 0}

    def flaky_update(stats, state):
        calls["n"] += 1
        if stats.step in (1, 2):
            raise ValueError("broken \x1b[2J detector")
        return [], state + 1

    flaky = D.Detector(lambda: 0, flaky_update, "flaky")
    steps = [StepStats.empty(s, t, grad_norm=np.array([1.0, math.nan if s == 2 else 1.0]),
                             nonfinite_grad=np.array([0, 1 if s == 2 else 0]), global_grad_norm=1.0)
             for s in range(5)]
    alone = D.run_detectors(D.nonfinite(), steps)
    both = D.run_detectors(D.chain(flaky, D.nonfinite()), steps)
    internal = [e for e in both if e.kind == "internal"]
    assert [e for e in both if e.kind != "internal"] == alone and alone   # the NaN event survives
    assert len(internal) == 1 and internal[0].step == 1                   # said once per failure run
    assert internal[0].evidence["detector"] == "flaky" and "\x1b" not in internal[0].message
    assert calls["n"] == 5   # it is tried again, and recovers at step 3
    # the state before the failure is kept: the flaky detector counted steps 0, 3, 4
    state = D.chain(flaky, D.nonfinite()).init()
    for s in steps:
        _, state = D.chain(flaky, D.nonfinite()).update(s, state)
    assert state[0] == 3
