"""``update_many`` (the watcher runs the detectors over a few steps at a time) against the
oracle it replaces: ``update`` called step after step. Same events, same final state, on
random mixes of healthy, exploding, vanishing, zero, non-finite, skipped and detail steps,
with structure changes inside a batch, and the fast paths shown to be taken."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradhealth.detectors import LayerTable, StepStats, chain, default_detectors
from gradhealth.detectors import base as B
from gradhealth.detectors import depth as D
from gradhealth.detectors.base import Detector, update_many, with_quiet
from gradhealth.watch.runlog import _encode

N_W = 6
_NAMES = tuple(f"fc{i}" for i in range(N_W)) + ("act", "sat")
_TABLES = {
    "relu": LayerTable(_NAMES, ("Linear",) * N_W + ("ReLU", "Tanh"), ("weight",) * N_W + ("activation",) * 2,
                       families=("",) * N_W + ("relu", "saturating"), activations=("",) * N_W + ("relu", "tanh"),
                       n_params=(64,) * N_W + (0, 0)),
    "functional": LayerTable(_NAMES[:N_W], ("Linear",) * N_W, ("weight",) * N_W, n_params=(16, 64, 64, 64, 64, 8)),
    "grown": LayerTable(_NAMES[:N_W] + ("fc6",), ("Linear",) * 7, ("weight",) * 7, n_params=(32,) * 7),
}
REGIMES = ("healthy", "healthy", "healthy", "exploding", "vanishing", "zero", "nan", "inf", "edge")


@st.composite
def step_stats(draw, step: int, table: str, regime: str | None = None) -> StepStats:
    t = _TABLES[table]
    L = len(t)
    nw = sum(r == "weight" for r in t.roles)
    regime = regime or draw(st.sampled_from(REGIMES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    k = max(1, nw // 3)
    ends_span = (nw - 1) - (k - 1)                 # positions between the medians of the end thirds
    steep = draw(st.sampled_from([2.0, 4.0, 8.0, 12.0]))
    gain = {"healthy": 1.0, "exploding": steep, "vanishing": 1 / steep, "zero": 1.0, "nan": 1.0, "inf": 1.0,
            "edge": 10 ** (2 / ends_span)}[regime]  # edge: the ends ratio near sqrt(1e4), the default
    g = np.full(L, np.nan)
    noise = 0.3 if regime != "edge" else 1e-3
    g[:nw] = 0.1 * gain ** (nw - 1 - np.arange(nw)) * np.exp(rng.normal(0, noise, nw)) * np.sqrt(t.n_params[:nw])
    nfg = np.full(L, -1, dtype=np.int64)
    nfg[:nw] = 0
    if regime == "zero":
        g[:draw(st.integers(1, 3))] = 0.0
    elif regime in ("nan", "inf"):
        i = draw(st.integers(0, nw - 1))
        g[i], nfg[i] = (math.nan if regime == "nan" else math.inf), 3
    kw: dict = {}
    if draw(st.booleans()):                      # a detail step: output gradients, ratios, forward stats
        og = np.full(L, np.nan)
        og[:nw] = g[:nw] / np.sqrt(np.maximum(t.n_params[:nw], 1))
        kw["out_grad_rms"] = og
        ur = np.full(L, np.nan)
        ur[:nw] = 1e-3 * np.exp(rng.normal(0, 1, nw))
        if draw(st.booleans()):
            ur[0] = 1e-9                          # a layer that stopped learning
        kw["update_ratio"] = ur
        if L > nw:
            act = np.full(L, np.nan)
            act[nw:] = draw(st.sampled_from([0.1, 0.7, 0.95]))
            kw["dead_frac"], kw["sat_frac"] = act, act
    if draw(st.integers(0, 9)) == 0:
        kw["time_grad"] = {t.names[1]: 0.5 ** np.arange(8.0)}
    if draw(st.integers(0, 7)) == 0:
        kw["skipped"], kw["skip_reason"] = True, draw(st.sampled_from(["guard", "scaler"]))
    loss = draw(st.sampled_from([1.0, 1.1, 0.9, 30.0, math.nan]))
    return StepStats(step=step, layers=t, loss=loss, global_grad_norm=float(np.sqrt(np.nansum(g ** 2))),
                     lr=0.1, grad_norm=g, nonfinite_grad=nfg, **kw)


@st.composite
def batches(draw):
    """A run in batches of 1..6 steps; the table changes at most at a few steps; in some runs
    one regime holds on most steps (an exploding or vanishing condition that persists)."""
    n = draw(st.integers(1, 40))
    names = draw(st.lists(st.sampled_from(sorted(_TABLES)), min_size=1, max_size=3))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=len(names) - 1, max_size=len(names) - 1)))
    sticky = draw(st.one_of(st.none(), st.sampled_from(REGIMES)))   # a condition that persists
    seq = []
    for i in range(n):
        table = names[sum(i >= c for c in cuts)]
        seq.append(draw(step_stats(i, table, sticky if draw(st.integers(0, 4)) else None)))
    sizes, out, i = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n)), [], 0
    for k in sizes:
        if i >= n:
            break
        out.append(seq[i:i + k])
        i += k
    return out


def _events(evs) -> list:
    return [(e.step, e.kind, e.layer, e.severity, e.message, _encode(dict(e.evidence)), e.since, e.remedy)
            for e in evs]


def _members() -> list[Detector]:
    """The default chain's members, in its order (see default_detectors)."""
    from gradhealth import detectors as det

    return [det.nonfinite(), det.exploding_vanishing(), det.update_ratio(), det.grad_spikes(),
            det.loss_spikes(), det.early_divergence(), det.dead_units(), det.saturation()]


def _check(det: Detector, batch_list) -> None:
    seq_state = det.init()
    many_state = det.init()
    for batch in batch_list:
        want = []
        for s in batch:
            ev, seq_state = det.update(s, seq_state)
            want.append(_events(ev))
        got, many_state = update_many(det, batch, many_state)
        assert [_events(e) for e in got] == want, det.name
        assert _encode(many_state) == _encode(seq_state), det.name


def test_which_members_have_a_batch_path():
    batched = {d.name for d in _members() if d.update_many is not None}
    assert batched == {"exploding_vanishing", "update_ratio", "dead_units", "saturation"}


@settings(max_examples=150, deadline=None)
@given(batches())
def test_each_member_update_many_equals_update_step_by_step(batch_list):
    for det in _members():
        _check(det, batch_list)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_the_default_chain_update_many_equals_its_update(batch_list):
    _check(default_detectors(), batch_list)


@settings(max_examples=60, deadline=None)
@given(batches(), st.one_of(st.sampled_from([10.0, 100.0, 1e3, 1e4]), st.floats(1.5, 1e5)),
       st.floats(1.0, 1.5), st.integers(0, 8))
def test_exploding_vanishing_other_thresholds(batch_list, param_ratio, min_growth, min_layers):
    _check(D.exploding_vanishing(param_ratio=param_ratio, ratio=param_ratio, min_growth=min_growth,
                                 min_layers=min_layers, cooldown=3, zero_patience=2), batch_list)


def _healthy(n: int, table: str = "functional") -> list[StepStats]:
    t = _TABLES[table]
    rng = np.random.default_rng(0)
    return [StepStats(step=i, layers=t, loss=1.0, grad_norm=np.sqrt(np.array(t.n_params, float))
                      * np.exp(rng.normal(0, 0.2, len(t))), nonfinite_grad=np.zeros(len(t), dtype=np.int64))
            for i in range(n)]


def test_the_depth_fit_is_skipped_on_quiet_steps(monkeypatch):
    """The fast path is taken (healthy steps: no trend fitted at all), and a batch holding an
    exploding step still fits that one (the depth signal, then the parameter-gradient fallback)."""
    calls = []
    real = D._trend_verdict
    monkeypatch.setattr(D, "_trend_verdict", lambda *a, **k: calls.append(1) or real(*a, **k))
    det = D.exploding_vanishing()
    seq = _healthy(5)
    _, state = update_many(det, seq, {"param_depth": ("vanishing", 0), "zero": (1, 0), "other": 1})
    assert calls == []
    assert state == {"other": 1}           # what update() clears on a healthy step, cleared
    loud = seq[2].replace(grad_norm=1e3 ** -np.arange(N_W, dtype=float) * 64)
    events, _ = update_many(det, [seq[0], loud, seq[3]], det.init())
    assert len(calls) == 2 and [e.kind for e in events[1]] == ["exploding"] and events[0] == events[2] == []


def test_with_quiet_calls_update_only_off_the_quiet_steps():
    seen = []

    def update(s, state):
        seen.append(s.step)
        return [], state + 1

    det = with_quiet(Detector(lambda: 0, update, "count"), lambda seq: [s.step % 2 == 0 for s in seq],
                     state_ok=lambda state: state < 2)
    _, state = update_many(det, _healthy(8), 0)
    # steps 0, 2 quiet while state < 2; 1 and 3 run (state 2 from there), so 4..7 all run
    assert seen == [1, 3, 4, 5, 6, 7] and state == 6


def _boom_at(k: int) -> Detector:
    def update(s, state):
        if s.step == k:
            raise RuntimeError("boom")
        return [], state + [s.step]

    return with_quiet(Detector(lambda: [], update, "boom"), lambda seq: [False] * len(seq))


@pytest.mark.parametrize("k", [0, 2, 4])
def test_a_member_failing_inside_a_batch_is_isolated_as_step_by_step(k):
    """The chain's batch path: the member that raises at step ``k`` gives the same internal
    event at the same step, the same failed state, and the other members go on."""
    det = chain(_boom_at(k), D.exploding_vanishing(), name="c")
    seq = _healthy(5)
    want_state, want = det.init(), []
    for s in seq:
        ev, want_state = det.update(s, want_state)
        want.append(_events(ev))
    got, state = update_many(det, seq, det.init())
    assert [_events(e) for e in got] == want
    assert [e.kind for e in got[k]] == ["internal"] and "boom" in got[k][0].message
    assert _encode(state) == _encode(want_state)
    assert isinstance(state[0], B._Failed) == (k == 4)


def test_update_many_of_a_plain_detector_is_the_loop():
    det = Detector(lambda: 0, lambda s, state: ([], state + s.step), "plain")
    assert update_many(det, _healthy(4), 10) == ([[], [], [], []], 16)


@pytest.mark.parametrize("gain", [0.2, 0.5, 0.8, 1.25, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("shape", ["geometric", "jump", "bend"])
def test_exploding_vanishing_near_its_thresholds(gain, shape):
    """Thresholds just below and above what each step shows: the quiet test must give way to
    the fit exactly where a verdict is possible (a single jump and a bent trend included,
    where the end thirds and the fitted line disagree)."""
    t = _TABLES["functional"]
    n = len(t)
    x = np.arange(n, dtype=float)[::-1]                 # input side first: highest exponent
    logs = {"geometric": x * np.log10(gain),
            "jump": np.where(x > n / 2, n * np.log10(gain), 0.0),
            "bend": np.where(x > n / 2, x, n / 2) * 2 * np.log10(gain)}[shape]
    rng = np.random.default_rng(1)
    seq = [StepStats(step=i, layers=t, loss=1.0, nonfinite_grad=np.zeros(n, dtype=np.int64),
                     grad_norm=10 ** (logs + rng.normal(0, 0.01, n)) * np.sqrt(t.n_params)) for i in range(6)]
    span = 10 ** abs(logs[0] - logs[-1])
    for f in (0.3, 0.9, 0.99, 1.01, 1.1, 3.0):
        R = max(1.01, span * f)
        for R_ in (R, R ** 2):                          # the end thirds checked against sqrt(R)
            _check(D.exploding_vanishing(param_ratio=R_, min_growth=1.01, cooldown=2), [seq[:3], seq[3:]])


def test_a_condition_that_persists_is_not_refitted(monkeypatch):
    """Exploding on every step: the first step fits (and reports), the next ones hold the same
    verdict and skip the fit, and a step that recovers clears the condition as update does."""
    t = _TABLES["functional"]
    n = len(t)
    grads = 8.0 ** np.arange(n, dtype=float)[::-1] * np.sqrt(t.n_params)
    seq = [StepStats(step=i, layers=t, loss=1.0, grad_norm=grads * (1 + 0.01 * i),
                     nonfinite_grad=np.zeros(n, dtype=np.int64)) for i in range(6)]
    seq[5] = seq[5].replace(grad_norm=np.sqrt(np.array(t.n_params, float)))   # recovered
    det = D.exploding_vanishing()
    calls = []
    real = D._trend_verdict
    monkeypatch.setattr(D, "_trend_verdict", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, state = update_many(det, seq[:1], det.init())
    assert [e.kind for e in got[0]] == ["exploding"] and len(calls) == 2
    got, state = update_many(det, seq[1:], state)
    assert got == [[]] * 5 and len(calls) == 2 and "param_depth" not in state
    _check(det, [seq[:1], seq[1:]])
