"""The detectors' fast statistics against the slow loops they replace (the oracles).

Each fast path claims the *same* numbers, not close ones: a sort-based median against
``np.median`` and ``statistics.median``, the cached-pair Theil-Sen slope against a loop over
every pair, the depth verdict that skips the fit against ``depth_trend`` + ``_verdict`` (the
full computation), and ``decode_clip``'s shortcut for unclipped samples against its general
path. The last lives here with the detectors' other fast paths (``watch/_record.py``).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradhealth.detectors import LayerTable, StepStats, run_detectors
from gradhealth.detectors import base as B
from gradhealth.detectors.depth import _fitted, _trend_verdict, _verdict, depth_trend, exploding_vanishing
from gradhealth.watch._record import StepRecord, _decode_general, decode_clip

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def slow_theil_sen(y):
    """Every pair, one at a time (Theil 1950, Sen 1968), at x = 0, 1, ..., n - 1."""
    slopes = [(y[j] - y[i]) / (j - i) for i in range(len(y)) for j in range(i + 1, len(y))]
    return statistics.median(slopes)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=60))
def test_median_is_numpy_median_to_the_bit(xs):
    v = np.array(xs)
    assert B.median(v) == float(np.median(v)) == statistics.median(xs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(finite, st.just(math.nan), st.just(math.inf)), min_size=1, max_size=60))
def test_robust_center_scale_is_the_numpy_formula(xs):
    v = np.array(xs)
    f = v[np.isfinite(v)]
    med, sig = B.robust_center_scale(xs)
    if f.size == 0:
        assert math.isnan(med) and math.isnan(sig)
        return
    want = float(np.median(f))
    assert med == want
    assert sig == B.MAD_TO_SIGMA * float(np.median(np.abs(f - want)))


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=40))
def test_theil_sen_uniform_equals_the_pairwise_loop(ys):
    y = np.array(ys)
    fast = B.theil_sen_slope_uniform(y)
    assert fast == slow_theil_sen(ys)
    assert fast == B.theil_sen_slope(np.arange(len(ys), dtype=float), y)


def test_theil_sen_uniform_needs_two_points():
    assert math.isnan(B.theil_sen_slope_uniform(np.array([1.0])))


def _series(draw_gain, n, noise, seed, holes):
    rng = np.random.default_rng(seed)
    v = draw_gain ** np.arange(n, 0, -1, dtype=float) * np.exp(noise * rng.standard_normal(n))
    for h in holes:
        if h < n:
            v[h] = (math.nan, 0.0, -1.0, math.inf)[h % 4]
    return v


@settings(max_examples=300, deadline=None)
@given(gain=st.sampled_from([0.5, 0.8, 0.95, 1.0, 1.02, 1.1, 1.3, 2.0]), n=st.integers(0, 70),
       noise=st.sampled_from([0.0, 0.1, 1.0, 3.0]), seed=st.integers(0, 10_000),
       holes=st.lists(st.integers(0, 69), max_size=6), ratio=st.sampled_from([2.0, 100.0, 1e4]),
       min_points=st.integers(0, 6))
def test_depth_verdict_without_the_fit_is_the_full_computation(gain, n, noise, seed, holes, ratio, min_points):
    v = _series(gain, n, noise, seed, holes)
    full = depth_trend(v, min_points=min_points)
    want = _verdict(full, ratio, 1.05)
    tr, got = _trend_verdict(v, min_points, ratio, 1.05)
    assert got == want
    assert (tr is None) == (full is None)
    if tr is not None:
        assert tr["n"] == full["n"] and np.array_equal(tr["positions"], full["positions"])
    if tr is not None:    # an event reads these (fitted for it): the same numbers
        tr = _fitted(tr)
        for k in ("growth_per_layer", "gsc", "ends_ratio"):
            assert tr[k] == full[k]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(4, 60), ratio=st.sampled_from([2.0, 100.0, 1e4]), min_growth=st.sampled_from([1.0, 1.05, 1.5]),
       sign=st.sampled_from([-1, 1]), ulps=st.integers(-3, 3), noise=st.sampled_from([0.0, 1e-12, 1e-9, 1e-6]),
       seed=st.integers(0, 1000))
def test_depth_verdict_at_its_threshold_is_the_full_computation(n, ratio, min_growth, sign, ulps, noise, seed):
    """Series whose fitted slope sits on the verdict's threshold (a few ulps either side, and
    within the counting shortcut's margin): the counted verdict equals the full rule's."""
    c = max(math.log10(ratio) / (n - 1), math.log10(min_growth))
    b = sign * c
    for _ in range(abs(ulps)):
        b = np.nextafter(b, math.inf if ulps > 0 else -math.inf)
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=float)
    v = 10 ** (b * x + noise * rng.standard_normal(n))
    full = depth_trend(v)
    want = _verdict(full, ratio, min_growth)
    tr, got = _trend_verdict(v, 4, ratio, min_growth)
    assert got == want


def test_depth_detector_events_equal_the_full_computation_over_a_run():
    """The detector (fast verdicts, lazy evidence) against a reference that calls the public
    ``depth_trend`` on every step: the same onset and clearing steps over a run that goes
    from healthy to vanishing, back, and to exploding (cooldown 0, so every onset counts)."""
    n = 24
    t = LayerTable.simple(n)
    rng = np.random.default_rng(3)
    gains = [1.0] * 5 + [0.6] * 6 + [1.0] * 4 + [1.5] * 5 + [1.01] * 3
    seq = [StepStats(step=s, layers=t, out_grad_rms=g ** np.arange(n, 0, -1.0) * np.exp(0.05 * rng.standard_normal(n)))
           for s, g in enumerate(gains)]
    events = run_detectors(exploding_vanishing(cooldown=0), seq)
    got = [(e.step, e.kind) for e in events]
    want, active = [], None
    for s in seq:
        verdict = _verdict(depth_trend(s.out_grad_rms[t.forward_order(t.is_weight())], min_points=4), 100.0, 1.05)
        if verdict is not None and verdict != active:
            want.append((s.step, verdict))
        active = verdict
    assert got == want and {k for _, k in got} == {"vanishing", "exploding"}
    assert events[0].evidence["series"] == pytest.approx(list(seq[events[0].step].out_grad_rms))


def test_layer_table_caches_are_read_only_and_right():
    t = LayerTable(("a", "b", "c", "d"), ("Linear",) * 4, ("weight", "norm", "recurrent", "weight"),
                   depth=(2, 0, 1, -1))
    assert list(t.is_weight()) == [True, False, True, True]
    assert list(t.weight_order) == list(t.forward_order(np.array([True, False, True, True]))) == [2, 0, 3]
    with pytest.raises(ValueError):
        t.is_weight()[0] = False


# ---------------------------------------------------------------------- decode_clip

def _fields(r: StepRecord):
    return (r.clip, r.clip_exact, r.clipped, r.clip_uniform)


sample = st.one_of(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32),
                   st.just(0.0), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), rest=st.one_of(st.none(), st.integers(0, 30)),
       prior=st.sampled_from([None, True, False]))
def test_decode_clip_shortcut_for_unclipped_samples_is_the_general_path(data, n, rest, prior):
    """Samples after the step identical to those before (no clip): the shortcut's record
    equals the general decoding's, field for field (zeros and infinities included)."""
    before = np.array(data.draw(st.lists(sample, min_size=4 * n, max_size=4 * n)), dtype=np.float32)
    v = np.concatenate([before, before])
    pos = data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n, unique=True))
    rest_l = None if rest is None else sorted(set(pos) | set(range(rest)))
    fast, slow = StepRecord(0, False), StepRecord(0, False)
    fast.clip_uniform = slow.clip_uniform = prior
    decode_clip(fast, pos, v, None, rest_l)
    _decode_general(slow, pos, v, None, rest_l)
    assert _fields(fast) == _fields(slow)


def test_decode_clip_rest_gets_the_common_coefficient_as_a_loop_would():
    """The general path fills the unsampled positions in one pass: the oracle is the loop."""
    before = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    v = np.concatenate([before, 0.375 * before])   # not a power of two: a clip, not AMP unscaling
    rec = StepRecord(0, False)
    decode_clip(rec, [3, 1], v, None, [0, 1, 2, 3, 4])
    want = {3: 0.375, 1: 0.375}
    for p in [0, 1, 2, 3, 4]:
        if p not in want:
            want[p] = 0.375
    assert rec.clip == want and rec.clipped and rec.clip_exact


# ---------------------------------------------------------------------- spike shortcuts

def _slow_spikes(values, *, window, warmup, test):
    """The spike rule recomputed in full at every step (no shortcut): ``test(x, w, med, sig)``
    decides; one event per episode. Returns the spike onsets' indices."""
    w, onsets, active = [], [], False
    for k, x in enumerate(values):
        if x is None:
            continue
        spike = False
        if len(w) >= warmup:
            med = float(np.median(w))
            sig = B.MAD_TO_SIGMA * float(np.median(np.abs(np.array(w) - med)))
            spike = test(x, w, med, sig)
        if spike and not active:
            onsets.append(k)
        active = spike
        w = (w + [x])[-window:]
    return onsets


walk = st.lists(st.one_of(st.floats(-0.4, 0.4), st.sampled_from([1.0, 2.0, 3.0, -2.0])), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(steps=walk, seed=st.integers(0, 1000), min_factor=st.sampled_from([0.5, 1.0, 6.0, 30.0]))
def test_grad_spike_shortcut_finds_what_the_full_rule_finds(steps, seed, min_factor):
    """``grad_spikes`` skips the median when the norm is within ``min_factor`` of the window's
    least: the onsets equal the full rule's, evaluated at every step."""
    import gradhealth.detectors as D

    t = LayerTable.simple(3)
    lg = np.cumsum(steps)
    rng = np.random.default_rng(seed)
    seq = [StepStats(step=k, layers=t, global_grad_norm=float(10 ** v),
                     grad_norm=10 ** (v + 0.1 * rng.standard_normal(3))) for k, v in enumerate(lg)]
    got = [e.step for e in run_detectors(D.grad_spikes(window=20, warmup=5, z=3.0, min_factor=min_factor), seq)]
    thr_floor = math.log10(min_factor)
    want = _slow_spikes([math.log10(s.global_grad_norm) for s in seq], window=20, warmup=5,
                        test=lambda x, w, med, sig: (x - med) > max(3.0 * sig, thr_floor))
    assert got == want


@settings(max_examples=150, deadline=None)
@given(steps=walk, min_rel=st.sampled_from([0.0, 0.5]), min_initial=st.sampled_from([0.0, 0.5]))
def test_loss_spike_shortcut_finds_what_the_full_rule_finds(steps, min_rel, min_initial):
    """``loss_spikes`` skips the median unless the loss is above the whole window: the onsets
    equal the full rule's (median, MAD and initial scale recomputed at every step)."""
    import gradhealth.detectors as D

    t = LayerTable.simple(2)
    loss = np.cumsum(steps)
    seq = [StepStats(step=k, layers=t, loss=float(v), grad_norm=np.ones(2)) for k, v in enumerate(loss)]
    got = [e.step for e in run_detectors(D.loss_spikes(window=20, warmup=5, z=3.0, min_rel=min_rel,
                                                       min_initial=min_initial), seq)]
    initial = abs(float(np.median(loss[:5]))) if len(loss) > 5 else 0.0
    want = _slow_spikes(list(map(float, loss)), window=20, warmup=5,
                        test=lambda x, w, med, sig: x > max(w) and (x - med) > max(
                            3.0 * sig, min_rel * abs(med), min_initial * initial))
    assert got == want
