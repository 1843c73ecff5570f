"""Every detector on a textbook broken run (alarm at the right step and layer), and healthy
controls that raise no alarm at all."""


import numpy as np
import pytest
import torch
from torch import nn

from watchnets import InfAfter, VanillaRNN, data, digits, gaussian_init, he_init, identity_init, kinds, mlp, train


def test_deep_tanh_sigma_w2_4_explodes():
    torch.manual_seed(0)
    w = train(mlp(50, 64, nn.Tanh, gaussian_init(4.0)), steps=3)
    ev = [e for e in w.events if e.kind == "exploding"]
    assert ev and ev[0].step == 0 and ev[0].layer == "0"
    # mean-field chi_1 of tanh at sigma_w2 = 4 is ~1.3: the signal grows ~1.1-1.2x per layer
    assert 1.05 < ev[0].evidence["growth_per_layer"] < 1.3
    assert ev[0].evidence["signal"] == "out_grad"


def test_deep_sigmoid_vanishes_and_first_layer_stops_learning():
    torch.manual_seed(0)
    w = train(mlp(10, 64, nn.Sigmoid), steps=6)
    van = [e for e in w.events if e.kind == "vanishing"]
    assert van and van[0].step == 0 and van[0].layer == "0"
    assert van[0].evidence["growth_per_layer"] < 0.3      # sigmoid' <= 1/4
    upd = [e for e in w.events if e.kind == "update_ratio"]
    assert upd and upd[0].layer == "0"
    # the global norm looks ordinary while the first layer's gradient is tiny
    s = w.history[0]
    assert s.grad_norm[0] / np.nanmax(s.grad_norm) < 1e-6


def test_vanilla_rnn_radius_3_explodes_through_time():
    torch.manual_seed(0)
    model = VanillaRNN(3.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 30, 8, generator=g) * 0.1
    y = torch.randint(0, 4, (256,), generator=g)
    w = train(model, steps=2, x=x, y=y, batch=32)
    ev = [e for e in w.events if e.kind == "exploding"]
    assert ev and ev[0].step == 0 and ev[0].layer == "rnn"
    assert ev[0].evidence["signal"] == "time" and ev[0].evidence["growth_per_layer"] > 1.2
    assert ev[0].evidence["time_steps"] == 30


def test_vanilla_rnn_radius_1_is_quiet():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 30, 8, generator=g) * 0.1
    y = torch.randint(0, 4, (256,), generator=g)
    w = train(VanillaRNN(1.0), steps=20, x=x, y=y, batch=32)
    assert kinds(w) == []


@pytest.mark.parametrize("scale,kind,growth", [(1.5, "exploding", 1.5), (0.5, "vanishing", 0.5)])
def test_deep_linear_identity_scaled(scale, kind, growth):
    torch.manual_seed(0)
    model = mlp(20, 32, None, identity_init(scale), din=32)
    x, y = data(din=32)
    w = train(model, steps=2, x=x, y=y, lr=1e-6)
    ev = [e for e in w.events if e.kind == kind]
    assert ev and ev[0].step == 0 and ev[0].layer == "0"
    assert ev[0].evidence["growth_per_layer"] == pytest.approx(growth, rel=0.02)
    if scale == 1.5:
        # the textbook point: every weight gradient has the same norm, the trend is invisible there
        gn = w.history[0].grad_norm[:20]
        assert gn.max() / gn.min() < 1.01


def test_layer_that_emits_inf_at_a_known_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), InfAfter(), nn.ReLU(),
                          nn.Linear(32, 4))

    def arm(i, m, opt):
        m[3].armed = i >= 7
    with pytest.warns(UserWarning, match="non-finite gradients"):
        w = train(model, steps=9, before_step=arm)
    nf = [e for e in w.events if e.kind == "nonfinite"]
    assert nf[0].step == 7 and nf[0].layer == "3"
    assert "InfAfter" in nf[0].message
    assert w.replays[0].step == 7 and w.replays[0].direction == "forward"


def test_learning_rate_spike():
    x, y = digits()
    torch.manual_seed(0)

    def spike(i, m, opt):
        for gr in opt.param_groups:
            gr["lr"] = 1.0 if i == 150 else 0.05
    w = train(mlp(3, 64, nn.ReLU, he_init, din=64, dout=10), steps=170, x=x, y=y, batch=32,
              lr=0.05, before_step=spike)
    k = [(e.step, e.kind) for e in w.events]
    assert (151, "grad_spike") in k and (151, "loss_spike") in k
    assert all(s >= 150 for s, _ in k)


def test_dead_relu_units():
    x, y = digits()
    torch.manual_seed(0)

    def neg_bias(lin):
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.constant_(lin.bias, -3.0)
    w = train(mlp(4, 64, nn.ReLU, neg_bias, din=64, dout=10), steps=4, x=x, y=y)
    dead = [e for e in w.events if e.kind == "dead_units"]
    assert dead and dead[0].step == 1 and dead[0].since == 0
    assert {e.layer for e in dead} >= {"5", "7"}
    assert all(w.layers.types[w.layers.names.index(e.layer)] == "ReLU" for e in dead)


def test_saturated_tanh():
    x, y = digits()
    torch.manual_seed(0)
    w = train(mlp(4, 64, nn.Tanh, gaussian_init(25.0), din=64, dout=10), steps=4, x=x, y=y)
    sat = [e for e in w.events if e.kind == "saturated"]
    assert sat and sat[0].step == 1 and sat[0].evidence["fraction"] > 0.5
    assert sat[0].remedy  # a prescription was attached


@pytest.mark.parametrize("opt_name,seed", [("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)])
def test_healthy_digits_mlp_raises_no_alarm(opt_name, seed):
    x, y = digits()
    torch.manual_seed(seed)
    model = mlp(4, 64, nn.ReLU, he_init, din=64, dout=10)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    w = train(model, steps=300, x=x, y=y, opt=opt, batch=32, seed=seed)
    assert w.events == [], [e.message for e in w.events]


def test_healthy_critical_tanh_and_layernorm_transformer_raise_no_alarm():
    torch.manual_seed(0)
    w = train(mlp(20, 64, nn.Tanh, gaussian_init(1.0)), steps=30)
    assert w.events == [], [e.message for e in w.events]
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 3,
                                enable_nested_tensor=False)
    model = nn.Sequential(enc, nn.Flatten(), nn.Linear(32 * 8, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, 32, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)
    w = train(model, steps=30, x=x, y=y, opt=torch.optim.Adam(model.parameters(), lr=1e-3), batch=16)
    assert w.events == [], [e.message for e in w.events]
