"""Calibration: textbook healthy networks raise no alarm; textbook broken ones are diagnosed
with the right verdict at the right layer (widths 32-64 keep this fast)."""

import pytest
import torch
from probenets import ResMLP, RNNNet, cnn, deep_linear, mlp
from torch import nn

from gradhealth.probe import probe


def test_tanh_50_layers_sigma_w2_4_explodes_at_the_first_layer():
    net = mlp(50, 64, nn.Tanh, sigma_w2=4.0)
    r = probe(net, torch.randn(32, 16))
    assert r.verdict == "exploding"
    assert r.worst_layer == "0" and r.layers[0].verdict == "exploding"
    ev = r.findings[0].evidence
    assert ev["gain_ratio"] > 100 and ev["growth_per_layer"] > 1.1
    # the plain tanh stack is compared with mean-field theory
    assert r.meanfield is not None and r.meanfield.activation == "tanh"
    assert r.meanfield.sigma_w2 == pytest.approx(4.0, rel=0.05)
    assert r.meanfield.chi_1_measured == pytest.approx(r.meanfield.chi_1_theory, rel=0.15)
    assert ev["chi_1_estimate"] > 1 and ev["activation"] == "tanh"
    assert r.prescriptions and "critical_" in r.prescriptions[0].code


def test_tanh_30_layers_sigma_w2_4_is_already_flagged():
    r = probe(mlp(30, 64, nn.Tanh, sigma_w2=4.0), torch.randn(32, 16), jacobian=False)
    assert r.verdict == "exploding" and r.worst_layer == "0"
    assert r.findings[0].evidence["trend_total"] > 50


def test_thresholds_are_the_users_to_move():
    from gradhealth.probe import Thresholds

    r = probe(mlp(30, 64, nn.Tanh, sigma_w2=4.0), torch.randn(32, 16), jacobian=False,
              thresholds=Thresholds(ratio=1e4))
    assert r.verdict == "healthy" and r.settings["thresholds"]["ratio"] == 1e4


def test_sigmoid_20_layers_default_init_vanishes_at_the_first_layer():
    r = probe(mlp(20, 64, nn.Sigmoid), torch.randn(32, 16))
    assert r.verdict == "vanishing" and r.worst_layer == "0"
    assert r.findings[0].evidence["gain_ratio"] < 1e-6
    assert r.findings[0].severity == "error"
    assert r.meanfield.chi_1_measured < 0.1


def test_vanilla_rnn_spectral_radius_3_over_100_steps_explodes_at_step_0():
    r = probe(RNNNet(3.0), torch.randn(8, 100, 4), jacobian=False)
    assert r.verdict == "exploding" and r.worst_layer == "rnn"
    (ts,) = r.recurrent
    assert ts.kind == "unrolled" and len(ts.gains) == 100
    assert ts.worst_step == 0 and ts.ratio > 1e6
    assert ts.spectral_radius == pytest.approx(3.0, rel=1e-4)
    ev = r.findings[0].evidence
    assert ev["time_step"] == 0 and ev["is_recurrent"] and ev["spectral_radius"] == pytest.approx(3.0, rel=1e-4)
    assert r.layer("rnn").verdict == "exploding"


@pytest.mark.parametrize("scale,verdict", [(1.5, "exploding"), (0.5, "vanishing")])
def test_deep_linear_identity_scaled(scale, verdict):
    r = probe(deep_linear(20, scale), torch.randn(16, 32))
    assert r.verdict == verdict and r.worst_layer == "0"
    ev = r.findings[0].evidence
    assert ev["growth_per_layer"] == pytest.approx(scale, rel=1e-3)
    assert ev["gain_ratio"] == pytest.approx(scale ** 19, rel=1e-3)
    assert r.meanfield.activation == "linear" and r.meanfield.chi_1_measured == pytest.approx(scale ** 2, rel=1e-3)


def test_he_relu_mlp_with_layernorm_residuals_is_healthy():
    r = probe(ResMLP(32, 12), torch.randn(32, 16))
    assert r.verdict == "healthy", r.summary
    assert not r.findings and not r.prescriptions
    assert r.residual is not None and r.residual.compositional_depth == 12
    assert 0 < r.residual.effective_depth < 12


def test_plain_he_relu_mlp_is_healthy():
    r = probe(mlp(20, 64, nn.ReLU, init="he"), torch.randn(32, 16))
    assert r.verdict == "healthy", r.summary
    assert r.meanfield.chi_1_measured == pytest.approx(1.0, abs=0.15)


def test_standard_transformer_encoder_is_healthy():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 4,
                                enable_nested_tensor=False)
    r = probe(enc, torch.randn(8, 10, 32))
    assert r.verdict == "healthy", r.summary
    assert r.residual is not None and r.residual.compositional_depth == 8  # attention + MLP per layer


def test_cnn_with_batchnorm_and_pooling_is_healthy():
    r = probe(cnn(), torch.randn(16, 3, 16, 16))
    assert r.verdict == "healthy", r.summary
    conv = r.layer("0")
    assert conv.activation is None and r.layer("1").activation == "relu"  # BatchNorm -> ReLU


def test_dead_relu_units_are_found():
    net = mlp(4, 64, nn.ReLU, init="he")
    with torch.no_grad():
        net[2].bias[:48] = -100.0  # 48 of 64 units never activate
    r = probe(net, torch.randn(32, 16))
    assert r.verdict == "dead_units" and r.worst_layer == "2"
    assert r.layer("2").act_dead_frac == pytest.approx(0.75)
    assert r.findings[0].evidence["fraction"] == pytest.approx(0.75)


def test_saturated_tanh_units_are_found():
    net = mlp(3, 64, nn.Tanh)
    with torch.no_grad():
        net[0].weight.mul_(50.0)
    r = probe(net, torch.randn(32, 16))
    kinds = {f.kind for f in r.findings}
    assert "saturated" in kinds
    sat = next(f for f in r.findings if f.kind == "saturated")
    assert sat.layer == "0" and sat.evidence["fraction"] > 0.5 and sat.evidence["activation"] == "tanh"


def test_nonfinite_gradient_with_finite_forward():
    class Sqrt(nn.Module):  # d sqrt(x)/dx = inf at 0: forward finite, backward not
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sqrt(torch.relu(self.fc(x)) * 0.0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Sqrt()
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x))

    r = probe(Net(), torch.randn(8, 4), jacobian=False)
    assert r.verdict == "nonfinite"
    assert r.findings[0].evidence["where"] == "backward"
    assert r.layer("a.fc").verdict == "nonfinite"
