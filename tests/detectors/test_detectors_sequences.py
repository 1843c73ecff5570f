"""Each detector on synthetic statistics sequences: broken sequences alarm at the right step,
healthy ones never do."""

import math

import numpy as np
import pytest

import gradhealth.detectors as D
from gradhealth.detectors import LayerTable, StepStats

L6 = LayerTable.simple(6)


def steps(n, **per_step):
    """StepStats for steps 0..n-1; keyword values are callables t -> value or constants."""
    out = []
    for t in range(n):
        kw = {k: (v(t) if callable(v) else v) for k, v in per_step.items()}
        out.append(StepStats(step=t, layers=kw.pop("layers", L6), **kw))
    return out


# ----------------------------------------------------------------------------- nonfinite

def test_nonfinite_onset_once_and_again_after_recovery():
    def nf(t):
        c = np.zeros(6, int)
        if t in (2, 3, 5):
            c[[1, 3]] = [4, 7]
        return c
    seq = steps(7, nonfinite_grad=nf, global_grad_norm=lambda t: math.nan if t in (2, 3, 5) else 1.0)
    ev = D.run_detectors(D.nonfinite(), seq)
    assert [(e.step, e.kind, e.layer) for e in ev] == [(2, "nonfinite", "layers.1"), (5, "nonfinite", "layers.1")]
    assert ev[0].evidence["count"] == 11 and ev[0].evidence["n_layers"] == 2


def test_nonfinite_uses_replay_origin_and_reports_loss_and_params():
    origin = {"found": True, "module": "blocks.3.attn", "direction": "forward", "summary": "x"}
    nfg = np.array([1, 1, 1, 1, 1, 1])
    seq = [StepStats(step=4, layers=L6, loss=math.inf, nonfinite_grad=nfg, origin=origin,
                     nonfinite_param=np.array([0, 2, 0, 0, 0, 0]))]
    ev = D.run_detectors(D.nonfinite(), seq)
    assert sorted(e.evidence.get("n_layers", 0) for e in ev) == [0, 1, 6]
    grad = [e for e in ev if "gradients" in e.message][0]
    assert grad.layer == "blocks.3.attn"
    par = [e for e in ev if "parameters" in e.message][0]
    assert par.layer == "layers.1" and par.severity == "critical"
    loss = [e for e in ev if "loss" in e.message][0]
    assert loss.evidence["loss"] == math.inf


def test_nonfinite_ignores_scaler_skips_and_healthy_steps():
    seq = steps(5, nonfinite_grad=np.zeros(6, int), loss=1.0)
    seq.append(StepStats(step=5, layers=L6, skipped=True, skip_reason="scaler",
                         nonfinite_grad=np.ones(6, int)))
    assert D.run_detectors(D.nonfinite(), seq) == []


# ----------------------------------------------------------------------------- depth trends

def geometric(g, n=6):
    return np.array([g ** (n - 1 - l) for l in range(n)], dtype=float)


@pytest.mark.parametrize("g,kind", [(3.0, "exploding"), (1 / 3, "vanishing")])
def test_depth_trend_alarm_at_step_0_names_input_side(g, kind):
    seq = steps(3, out_grad_rms=geometric(g))
    ev = D.run_detectors(D.exploding_vanishing(), seq)
    assert [(e.step, e.kind, e.layer) for e in ev] == [(0, kind, "layers.0")]
    assert ev[0].evidence["growth_per_layer"] == pytest.approx(g)
    assert ev[0].evidence["gsc"] == pytest.approx(g ** 5)
    assert ev[0].evidence["signal"] == "out_grad"


def test_depth_trend_healthy_noise_and_output_jump_do_not_alarm():
    rng = np.random.default_rng(0)

    def v(t):
        x = np.exp(rng.normal(0, 0.3, size=6))
        x[-1] *= 50.0   # the output layer's gradient has the loss's own scale
        return x
    assert D.run_detectors(D.exploding_vanishing(), steps(50, out_grad_rms=v)) == []


def test_depth_trend_threshold_is_the_end_to_end_ratio():
    # 1.9x per layer over 6 layers: 1.9**5 = 24.8 < 100 by default, > 20 with ratio=20
    seq = steps(1, out_grad_rms=geometric(1.9))
    assert D.run_detectors(D.exploding_vanishing(), seq) == []
    assert [e.kind for e in D.run_detectors(D.exploding_vanishing(ratio=20), seq)] == ["exploding"]


def test_param_gradient_fallback_is_stricter_and_used_without_output_grads():
    layers = LayerTable(tuple(f"l{i}" for i in range(6)), ("Linear",) * 6, ("weight",) * 6,
                        n_params=(100,) * 6)
    ok = steps(1, layers=layers, grad_norm=geometric(0.3) * 10)          # 0.3**5 = 2.4e-3 > 1e-4
    bad = steps(1, layers=layers, grad_norm=geometric(0.1) * 10)         # 1e-5
    assert D.run_detectors(D.exploding_vanishing(), ok) == []
    ev = D.run_detectors(D.exploding_vanishing(), bad)
    assert [(e.kind, e.evidence["signal"]) for e in ev] == [("vanishing", "param_grad")]


def test_same_condition_from_both_signals_is_reported_once():
    layers = LayerTable(tuple(f"l{i}" for i in range(6)), ("Linear",) * 6, ("weight",) * 6,
                        n_params=(100,) * 6)
    seq = [StepStats(step=0, layers=layers, out_grad_rms=geometric(0.1)),
           StepStats(step=1, layers=layers, grad_norm=geometric(0.1))]
    assert len(D.run_detectors(D.exploding_vanishing(), seq)) == 1


def test_time_trend_for_recurrent_layers():
    series = 1.5 ** np.arange(30)[::-1]      # gradient reaching step t grows going back in time
    seq = [StepStats(step=0, layers=L6, time_grad={"rnn": series})]
    ev = D.run_detectors(D.exploding_vanishing(), seq)
    assert [(e.kind, e.layer) for e in ev] == [("exploding", "rnn")]
    assert ev[0].evidence["is_recurrent"] is True
    assert ev[0].evidence["growth_per_layer"] == pytest.approx(1.5)


def test_flapping_condition_is_not_reported_again_within_cooldown():
    vals = [geometric(3.0), geometric(1.0), geometric(3.0), geometric(1.0), geometric(3.0)]
    seq = [StepStats(step=10 * t, layers=L6, out_grad_rms=v) for t, v in enumerate(vals)]
    assert len(D.run_detectors(D.exploding_vanishing(), seq)) == 1
    assert len(D.run_detectors(D.exploding_vanishing(cooldown=0), seq)) == 3


# ----------------------------------------------------------------------------- update ratio

def test_update_ratio_collapse_needs_patience_and_names_worst_layer():
    def r(t):
        x = np.full(6, 1e-3)
        x[0] = 1e-9 if t >= 3 else 1e-3
        return x
    ev = D.run_detectors(D.update_ratio(), steps(8, update_ratio=r))
    assert [(e.step, e.kind, e.layer, e.since) for e in ev] == [(4, "update_ratio", "layers.0", 3)]
    assert ev[0].evidence["update_ratio"] == pytest.approx(1e-9)


def test_update_ratio_explosion_reported_at_once_and_healthy_silent():
    def r(t):
        x = np.full(6, 2e-3)
        if t == 5:
            x[2] = 3.0
        return x
    ev = D.run_detectors(D.update_ratio(), steps(8, update_ratio=r))
    assert [(e.step, e.layer) for e in ev] == [(5, "layers.2")]
    rng = np.random.default_rng(1)
    healthy = steps(100, update_ratio=lambda t: 1e-3 * np.exp(rng.normal(0, 1, 6)))
    assert D.run_detectors(D.update_ratio(), healthy) == []


# ----------------------------------------------------------------------------- spikes

def _slow_grad_spike(values, t, window=50, warmup=30, z=6.0, min_factor=6.0):
    past = [math.log10(v) for v in values[max(0, t - window):t]]
    if len(past) < warmup:
        return False
    med = float(np.median(past))
    mad = 1.4826 * float(np.median([abs(p - med) for p in past]))
    return math.log10(values[t]) - med > max(z * mad, math.log10(min_factor))


def test_grad_spike_matches_slow_rule_and_reports_once_per_episode():
    rng = np.random.default_rng(0)
    g = list(np.exp(rng.normal(0, 0.2, size=300)))
    for t in (150, 151, 152):
        g[t] *= 40
    g[10] *= 100    # during warm-up: no alarm
    seq = steps(300, global_grad_norm=lambda t: float(g[t]))
    ev = D.run_detectors(D.grad_spikes(), seq)
    expected = [t for t in range(300) if _slow_grad_spike(g, t)]
    assert expected[0] == 150 and set(expected) <= {150, 151, 152}
    assert [e.step for e in ev] == [150]
    assert ev[0].evidence["factor"] == pytest.approx(40, rel=0.5)


def test_grad_spike_healthy_noise_is_silent():
    rng = np.random.default_rng(3)
    g = np.exp(rng.normal(0, 0.5, size=2000))
    assert D.run_detectors(D.grad_spikes(), steps(2000, global_grad_norm=lambda t: float(g[t]))) == []


def test_grad_spike_names_layer_with_largest_growth():
    def gn(t):
        x = np.ones(6)
        if t == 60:
            x[4] = 100.0
        return x
    seq = steps(80, grad_norm=gn, global_grad_norm=lambda t: 100.0 if t == 60 else 1.0 + 0.01 * (t % 3))
    ev = D.run_detectors(D.grad_spikes(), seq)
    assert [(e.step, e.layer) for e in ev] == [(60, "layers.4")]


def test_loss_spike_on_decreasing_loss():
    rng = np.random.default_rng(0)
    loss = [2.3 * math.exp(-t / 60) + 0.02 * rng.random() for t in range(300)]
    loss[200] = 3.0
    ev = D.run_detectors(D.loss_spikes(), steps(300, loss=lambda t: loss[t]))
    assert [e.step for e in ev] == [200]
    assert ev[0].evidence["initial_loss"] == pytest.approx(np.median(loss[:20]))


def test_loss_spike_small_hard_batches_near_zero_loss_are_silent():
    rng = np.random.default_rng(0)
    loss = [2.3 * math.exp(-t / 30) + 0.002 for t in range(400)]
    for t in range(100, 400, 37):
        loss[t] = 0.3 + 0.2 * rng.random()   # 100x the median, but small next to the initial 2.3
    assert D.run_detectors(D.loss_spikes(), steps(400, loss=lambda t: loss[t])) == []


def test_loss_spike_works_with_negative_losses():
    loss = [-100.0 + 0.1 * ((t * 7) % 5) for t in range(100)]
    loss[80] = -10.0
    ev = D.run_detectors(D.loss_spikes(), steps(100, loss=lambda t: loss[t]))
    assert [e.step for e in ev] == [80]


# ----------------------------------------------------------------------------- units

def _acts():
    return LayerTable(("fc0", "relu0", "fc1", "tanh1"), ("Linear", "ReLU", "Linear", "Tanh"),
                      ("weight", "activation", "weight", "activation"),
                      ("", "relu", "", "saturating"), ("", "relu", "", "tanh"))


def test_dead_units_after_patience_with_since():
    def dead(t):
        return np.array([np.nan, 0.8 if t >= 2 else 0.1, np.nan, np.nan])
    ev = D.run_detectors(D.dead_units(), steps(6, layers=_acts(), dead_frac=dead))
    assert [(e.step, e.kind, e.layer, e.since) for e in ev] == [(3, "dead_units", "relu0", 2)]
    assert ev[0].evidence["fraction"] == pytest.approx(0.8)


def test_saturation_event_and_recovery():
    def sat(t):
        return np.array([np.nan, np.nan, np.nan, 0.95 if t in (0, 1, 4, 5) else 0.05])
    ev = D.run_detectors(D.saturation(), steps(6, layers=_acts(), sat_frac=sat))
    assert [(e.step, e.layer, e.severity) for e in ev] == [(1, "tanh1", "error"), (5, "tanh1", "error")]
    assert ev[0].evidence["activation"] == "tanh"


def test_units_healthy_silent():
    seq = steps(20, layers=_acts(), dead_frac=np.array([np.nan, 0.05, np.nan, np.nan]),
                sat_frac=np.array([np.nan, np.nan, np.nan, 0.02]))
    assert D.run_detectors(D.chain(D.dead_units(), D.saturation()), seq) == []
