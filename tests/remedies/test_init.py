"""Initialisers: variance formulas (statistically), torch.nn.init as oracle, activation matching."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.errors import ParameterError
from gradhealth.remedies import critical_, gaussian_, he_, lecun_, lsuv_, orthogonal_, xavier_, zero_init_residual_
from gradhealth.remedies.init import activation_gain, weight_layers


def _var_ok(w: torch.Tensor, expected: float, z: float = 5.0) -> bool:
    """Sample variance of n iid entries is within z standard errors of the expected one
    (Var[s^2] = 2 sigma^4 / (n - 1) for a normal; a uniform has a smaller spread)."""
    n = w.numel()
    se = expected * math.sqrt(2.0 / (n - 1))
    return abs(float(w.detach().double().var()) - expected) < z * se


# --- variance formulas, measured --------------------------------------------------------------
@pytest.mark.parametrize("act,gain2", [("relu", 2.0), ("tanh", 25 / 9), ("linear", 1.0), ("sigmoid", 1.0),
                                       ("leaky_relu(0.2)", 2 / 1.04), ("selu", 9 / 16)])
@pytest.mark.parametrize("dist", ["normal", "uniform", "truncated_normal"])
def test_he_variance(act, gain2, dist):
    m = nn.Linear(300, 200)
    s = he_(m, activation=act, distribution=dist)
    assert _var_ok(m.weight, gain2 / 300) and torch.all(m.bias == 0)
    assert s.changed[0].activation.startswith(act.split("(")[0]) and s.changed[0].source == "argument"
    he_(m, activation=act, mode="fan_out", distribution=dist)
    assert _var_ok(m.weight, gain2 / 200)


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_xavier_lecun_gaussian_critical_variance_on_conv(dist):
    m = nn.Conv2d(16, 32, kernel_size=3)  # fan_in 144, fan_out 288
    xavier_(m, activation="tanh", distribution=dist)
    assert _var_ok(m.weight, (25 / 9) * 2 / (144 + 288))
    lecun_(m, distribution=dist)
    assert _var_ok(m.weight, 1 / 144)
    gaussian_(m, sigma_w2=4.0, sigma_b2=0.25)
    assert _var_ok(m.weight, 4 / 144) and _var_ok(m.bias, 0.25, z=6)
    critical_(m, activation="tanh", sigma_b2=0.05)
    assert _var_ok(m.weight, 1.7609546 / 144)
    critical_(m, activation="relu")
    assert _var_ok(m.weight, 2 / 144) and torch.all(m.bias == 0)


def test_gain_for_activations_torch_does_not_define():
    # 1 / sqrt(E[phi(z)^2]) by quadrature, checked against Monte Carlo
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, fn in [("gelu", F.gelu), ("swish", F.silu), ("elu", F.elu)]:
        mc = 1 / math.sqrt(float((fn(z) ** 2).mean()))
        assert activation_gain(name) == pytest.approx(mc, rel=3e-3)
    assert activation_gain("relu") == pytest.approx(math.sqrt(2))


# --- torch.nn.init as oracle where they overlap ---------------------------------------------
@pytest.mark.parametrize("act", ["relu", "tanh", "linear", "leaky_relu(0.1)"])
def test_he_and_xavier_match_torch_init_bitwise(act):
    name, a = (act.split("(")[0], float(act.split("(")[1][:-1])) if "(" in act else (act, None)
    for mode in ("fan_in", "fan_out"):
        m1, m2 = nn.Linear(20, 30), nn.Linear(20, 30)
        torch.manual_seed(1)
        he_(m1, activation=act, mode=mode)
        torch.manual_seed(1)
        nn.init.kaiming_normal_(m2.weight, a=a or 0, mode=mode, nonlinearity=name)
        assert torch.equal(m1.weight, m2.weight)
    torch.manual_seed(2)
    xavier_(m1, activation=act)
    torch.manual_seed(2)
    nn.init.xavier_uniform_(m2.weight, gain=nn.init.calculate_gain(name, a))
    assert torch.allclose(m1.weight, m2.weight, rtol=1e-6)
    torch.manual_seed(3)
    orthogonal_(m1, gain=1.5)
    torch.manual_seed(3)
    nn.init.orthogonal_(m2.weight, gain=1.5)
    assert torch.equal(m1.weight, m2.weight)


def test_orthogonal_gives_isometry_and_rnn_blocks_are_orthogonal():
    m = nn.Linear(64, 64)
    orthogonal_(m, gain=1.0)
    sv = torch.linalg.svdvals(m.weight.detach())
    assert torch.allclose(sv, torch.ones(64), atol=1e-5)
    lstm = nn.LSTM(8, 16)
    s = orthogonal_(lstm, gain=1.0)
    assert s.changed[0].params == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    for block in lstm.weight_hh_l0.detach().chunk(4, dim=0):  # one orthogonal matrix per gate
        assert torch.allclose(block @ block.T, torch.eye(16), atol=1e-5)
    rnn = nn.RNN(4, 32, nonlinearity="relu")
    rnn.weight_hh_l0.data.mul_(10)
    orthogonal_(rnn, gain=1.0)
    assert torch.linalg.eigvals(rnn.weight_hh_l0.detach()).abs().max().item() == pytest.approx(1.0, abs=1e-4)


# --- matching each layer to the activation that follows it ----------------------------------
def test_detection_through_norm_dropout_and_output_layer():
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                      nn.Dropout(0.1), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 3))
    s = he_(m)
    got = {c.layer: (c.activation, c.source) for c in s.changed}
    assert got["0"] == ("relu", "detected") and got["3"] == ("tanh", "detected")
    assert got["6"] == ("leaky_relu(0.2)", "detected")
    assert got["8"] == ("linear", "detected (output layer)")
    assert not s.unmatched
    assert "he_: 4 layer(s) re-initialised" in str(s)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = h + torch.tanh(self.b(h))        # residual add, functional tanh
        h = self.c(h).sigmoid()               # method call
        return F.log_softmax(self.d(h), -1)   # output layer (logits)


def test_detection_of_functional_activations_via_fx():
    s = xavier_(Functional())
    got = {c.layer: (c.activation, c.source) for c in s.changed}
    assert got == {"a": ("relu", "detected"), "b": ("tanh", "detected"), "c": ("sigmoid", "detected"),
                   "d": ("linear", "detected (output layer)")}


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b, self.c = nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.c(F.relu(self.b(self.act(self.a(x)))))


def test_untraceable_model_falls_back_to_module_order_and_reports_what_it_cannot_match():
    m = Untraceable()
    before = m.b.weight.detach().clone()
    with pytest.warns(UserWarning, match="left unchanged"):
        s = he_(m)
    got = {c.layer: c.source for c in s.changed}
    assert got["a"].startswith("detected (module order") and "c" in got
    assert [u[0] for u in s.unmatched] == ["b"] and "overrides" in s.unmatched[0][1]
    assert torch.equal(m.b.weight, before)  # not guessed
    # the user fills the gap: by override, or with a default
    s = he_(m, overrides={"b": "relu"})
    assert {c.layer: c.source for c in s.changed}["b"] == "override" and not s.unmatched
    s = he_(m, default_activation="relu")
    assert {c.layer: c.source for c in s.changed}["b"].startswith("default")


def test_rnn_nonlinearity_and_layers_pattern():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 16, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    m = Seq()
    s = he_(m)
    got = {c.layer: (c.activation, c.source) for c in s.changed}
    assert got["rnn"] == ("relu", "rnn") and got["head"][0] == "linear"
    head = m.head.weight.detach().clone()
    s = critical_(m, layers="rnn")
    assert [c.layer for c in s.changed] == ["rnn"] and torch.equal(m.head.weight, head)
    assert weight_layers(m) == [("rnn", m.rnn), ("head", m.head)]


# --- LSUV ---------------------------------------------------------------------------------------
def test_lsuv_gives_unit_output_variance_and_restores_mode():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.Tanh(),
                      nn.Linear(64, 10))
    m.train()
    x = torch.randn(256, 20) * 7 + 3
    s = lsuv_(m, x, tol=0.01)
    assert m.training and all(mod.training for mod in m.modules())
    assert [c.layer for c in s.changed] == ["0", "3", "5"]
    outs = {}
    hooks = [m[i].register_forward_hook(lambda mod, i, o, k=i: outs.__setitem__(k, o)) for i in (0, 3, 5)]
    m.eval()
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    for k, o in outs.items():
        assert abs(float(o.var()) - 1.0) < 0.02, k


def test_lsuv_rejects_nonfinite_batch():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 4)
    x[0, 0] = math.nan
    with pytest.raises(ParameterError, match="'inputs' parameter of lsuv_"):
        lsuv_(m, x)
    with pytest.raises(ParameterError, match="'init' parameter of lsuv_"):
        lsuv_(m, torch.randn(8, 4), init="kaiming")


# --- residual branches --------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, d, norm=False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d) if norm else None

    def forward(self, x):
        h = self.fc2(F.relu(self.fc1(x)))
        if self.norm is not None:
            h = self.norm(h)
        return x + h


def test_zero_init_residual_finds_branch_ends():
    m = nn.Sequential(nn.Linear(4, 8), Block(8), Block(8, norm=True), nn.Linear(8, 2))
    s = zero_init_residual_(m)
    assert [c.layer for c in s.changed] == ["1.fc2", "2.norm"]
    assert torch.all(m[1].fc2.weight == 0) and torch.all(m[2].norm.weight == 0)
    x = torch.randn(5, 8)
    assert torch.equal(m[1](x), x) and torch.equal(m[2](x), x)  # blocks start as the identity
    s = zero_init_residual_(m, layers="*.fc1")
    assert [c.layer for c in s.changed] == ["1.fc1", "2.fc1"]
    with pytest.raises(ParameterError, match="residual"):
        zero_init_residual_(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


# --- bad input ---------------------------------------------------------------------------------
def test_bad_input_names_parameter_value_and_fix():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ParameterError, match="(?s)'layers' parameter of he_.*Got 'enc.*'.*choose from: 0, 2"):
        he_(m, layers="enc.*")
    with pytest.raises(ParameterError, match="'overrides' parameter of xavier_"):
        xavier_(m, overrides={"nope": "relu"})
    with pytest.raises(ParameterError, match="'activation' parameter of he_"):
        he_(m, activation="swishy")
    with pytest.raises(ParameterError, match="'model' parameter of critical_.*Linear, Conv or RNN"):
        critical_(nn.Sequential(nn.ReLU(), nn.Embedding(3, 3)))
    with pytest.raises(ParameterError, match="'model' parameter of lecun_"):
        lecun_("not a model")
    with pytest.raises(ParameterError, match="'mode' parameter of he_"):
        he_(m, mode="fan_avg")
    with pytest.raises(ParameterError, match="'distribution' parameter of xavier_"):
        xavier_(m, distribution="cauchy")
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ParameterError, match="'gain' parameter of orthogonal_"):
            orthogonal_(m, gain=bad)
        with pytest.raises(ParameterError, match="'sigma_w2' parameter of gaussian_"):
            gaussian_(m, sigma_w2=bad)
    with pytest.raises(ParameterError, match="'sigma_b2' parameter of critical_"):
        critical_(m, sigma_b2=-0.1)
    with pytest.raises(ParameterError, match="'activation' parameter of critical_.*gelu"):
        critical_(m, activation="gelu")  # gelu has no order-to-chaos transition
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        he_(m)  # a cleanly matched model warns about nothing


# --- replace_activation_ -------------------------------------------------------------------------
def test_replace_activation_swaps_modules_and_rejects_functional_ones():
    from gradhealth.remedies import replace_activation_

    m = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Sequential(nn.Linear(8, 8), nn.Sigmoid()),
                      nn.Linear(8, 2))
    out = replace_activation_(m, "sigmoid", "leaky_relu(0.1)")
    assert out == {"1": "Sigmoid -> LeakyReLU", "2.1": "Sigmoid -> LeakyReLU"}
    assert isinstance(m[2][1], nn.LeakyReLU) and m[2][1].negative_slope == 0.1
    s = he_(m)
    assert {c.layer: c.activation for c in s.changed}["2.0"] == "leaky_relu(0.1)"
    with pytest.raises(ParameterError, match="(?s)'old' parameter of replace_activation_.*leaky_relu"):
        replace_activation_(m, "sigmoid", "relu")
    with pytest.raises(ParameterError, match="(?s)'old'.*none"):
        replace_activation_(Functional(), "relu", "gelu")
    with pytest.raises(ParameterError, match="'new' parameter"):
        replace_activation_(m, "leaky_relu", "nonsense")


def test_replace_activation_replaces_a_shared_instance_everywhere():
    from gradhealth.remedies import replace_activation_

    act = nn.Sigmoid()
    m = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    out = replace_activation_(m, "sigmoid", "relu")
    assert set(out) == {"1", "3"}
    assert isinstance(m[1], nn.ReLU) and isinstance(m[3], nn.ReLU)
    x = torch.randn(5, 4)  # oracle: the same net written with relu by hand
    ref = m[4](torch.relu(m[2](torch.relu(m[0](x)))))
    torch.testing.assert_close(m(x), ref)


class _AttnBlock(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.fc2(torch.relu(self.fc1(self.ln2(x))))


class _OddBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.cumsum(self.fc(x), dim=-1)  # ends in an op nothing can zero


def test_zero_init_residual_zeroes_attention_out_proj_and_reports_what_it_cannot():
    from gradhealth.remedies import zero_init_residual_

    torch.manual_seed(0)
    m = nn.Sequential(_AttnBlock(), _AttnBlock())
    s = zero_init_residual_(m)
    assert {c.layer for c in s.changed} == {"0.attn.out_proj", "0.fc2", "1.attn.out_proj", "1.fc2"}
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(m(x), x)  # oracle: every block now starts as the identity
    with pytest.warns(UserWarning, match="left unchanged"):
        s2 = zero_init_residual_(nn.Sequential(_OddBranch(), nn.Linear(4, 8), _AttnBlock()))
    assert {c.layer for c in s2.changed} == {"2.attn.out_proj", "2.fc2"}
    assert len(s2.unmatched) == 1 and "cumsum" in s2.unmatched[0][1]
    with pytest.raises(ParameterError, match="cumsum"):  # nothing zeroable at all: say why
        zero_init_residual_(nn.Sequential(_OddBranch()))


def test_old_import_paths_of_the_split_init_module():
    """init.py was split (planner, summary, LSUV, residual zeroing): every name it had is still
    importable from gradhealth.remedies.init and is the same object as in its new home."""
    from gradhealth.remedies import _plan, _summary, init, lsuv, residual

    for name in init.__all__:
        assert getattr(init, name) is not None, name
    assert init.lsuv_ is lsuv.lsuv_ and init.zero_init_residual_ is residual.zero_init_residual_
    assert init.InitSummary is _summary.InitSummary and init.LayerInit is _summary.LayerInit
    for name in ("weight_layers", "_ACT_MODULES", "_act_of_module", "_parse_act", "_plan", "_Act"):
        assert getattr(init, name) is getattr(_plan, name), name
