"""forget_gate_bias_ and the prescriptions for a vanishing LSTM (issue 10, item 4).

Oracles: torch's own LSTM step (which gate a bias chunk drives is read off the cell state it
produces), and autograd on the model (the gradient reaching the input at t = 0).
"""

import ast
import math

import pytest
import torch
from torch import nn

import gradhealth.remedies as R
from gradhealth.errors import ParameterError
from gradhealth.probe import probe
from gradhealth.remedies import forget_gate_bias_, prescribe


def _zeroed(lstm):
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
    return lstm


def _cell_after_one_step(lstm, c0):
    """c_1 of a zero-input, zero-h0 step of torch's LSTM from cell state c0."""
    n = lstm.num_layers * (2 if lstm.bidirectional else 1)
    x = torch.zeros(1, 1, lstm.input_size)
    h0 = torch.zeros(n, 1, lstm.hidden_size)
    _, (_, c1) = lstm(x, (h0, c0.expand(n, 1, lstm.hidden_size).contiguous()))
    return c1


def test_value_drives_torchs_forget_gate():
    lstm = _zeroed(nn.LSTM(3, 5, num_layers=2, bidirectional=True))
    forget_gate_bias_(lstm, value=3.0)
    # zero weights, x = 0, h0 = 0: i = sigmoid(0), g = tanh(0) = 0, so c1 = sigmoid(b_f) * c0
    c1 = _cell_after_one_step(lstm, torch.ones(1, 1, 5))
    assert torch.allclose(c1, torch.full_like(c1, 1 / (1 + math.exp(-3.0))))
    for name, p in lstm.named_parameters():  # the other chunks untouched
        if name.startswith("bias"):
            rest = torch.cat([p[:5], p[10:]])
            assert torch.all(rest == 0), name


def test_chrono_sets_forget_and_input_gates():
    torch.manual_seed(0)
    lstm = _zeroed(nn.LSTM(3, 64))
    forget_gate_bias_(lstm, chrono=100)
    with torch.no_grad():
        lstm.bias_hh_l0[128:192] = 30.0  # g = tanh(30) = 1: c1 = sigmoid(b_f) c0 + sigmoid(b_i)
    bf = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[64:128].detach()
    assert float(bf.min()) >= 0.0 and float(bf.max()) <= math.log(99) + 1e-6
    forget = _cell_after_one_step(lstm, torch.ones(1, 1, 64)) - _cell_after_one_step(lstm, torch.zeros(1, 1, 64))
    inp = _cell_after_one_step(lstm, torch.zeros(1, 1, 64))
    assert torch.allclose(forget.flatten(), torch.sigmoid(bf), atol=1e-6)
    assert torch.allclose(inp.flatten(), torch.sigmoid(-bf), atol=1e-6)


def test_lstm_cell_and_errors():
    cell = _zeroed(nn.LSTMCell(2, 4))
    s = forget_gate_bias_(nn.Sequential(cell))
    assert len(s) == 1 and torch.all((cell.bias_ih + cell.bias_hh)[4:8] == 1.0)
    assert forget_gate_bias_(nn.LSTM(2, 4, bias=False)).unmatched
    with pytest.raises(ParameterError, match="Fix:"):
        forget_gate_bias_(nn.RNN(2, 4))
    with pytest.raises(ParameterError):
        forget_gate_bias_(nn.LSTM(2, 4), chrono=1)
    with pytest.raises(ParameterError):
        forget_gate_bias_(nn.LSTM(2, 4), value=math.nan)


def _gru_step(gru, h0):
    """h_1 of a zero-input step of torch's GRU from state h0."""
    n = gru.num_layers * (2 if gru.bidirectional else 1)
    _, h1 = gru(torch.zeros(1, 1, gru.input_size), h0.expand(n, 1, gru.hidden_size).contiguous())
    return h1


def test_gru_update_gate_is_the_one_set():
    """Oracle: torch's GRU step. Zero weights and input: n = tanh(0) = 0, so
    h_1 = z * h_0 with z = sigmoid(b_z), whatever the reset gate; chrono draws b_z in
    [0, log(T - 1)] per unit and leaves the r and n chunks at 0 (a GRU has no input gate)."""
    gru = _zeroed(nn.GRU(3, 5, num_layers=2, bidirectional=True))
    forget_gate_bias_(gru, value=3.0)
    h1 = _gru_step(gru, torch.ones(1, 1, 5))
    assert torch.allclose(h1, torch.full_like(h1, 1 / (1 + math.exp(-3.0))))
    torch.manual_seed(0)
    gru = _zeroed(nn.GRU(3, 64))
    s = forget_gate_bias_(gru, chrono=100)
    bz = (gru.bias_ih_l0 + gru.bias_hh_l0)[64:128].detach()
    assert float(bz.min()) >= 0.0 and float(bz.max()) <= math.log(99) + 1e-6 and float(bz.std()) > 0.3
    assert torch.allclose(_gru_step(gru, torch.ones(1, 1, 64)).flatten(), torch.sigmoid(bz), atol=1e-6)
    for p in (gru.bias_ih_l0, gru.bias_hh_l0):
        assert torch.all(p[:64] == 0) and torch.all(p[128:] == 0)
    assert "b_z = log U(1, 99)" in s.changed[0].scheme
    cell = _zeroed(nn.GRUCell(2, 4))
    forget_gate_bias_(nn.Sequential(cell))
    assert torch.all((cell.bias_ih + cell.bias_hh)[4:8] == 1.0)


def test_gru_vanishing_gets_the_update_gate_first():
    """The rule for a GRU vanishing through time: chrono init of the update gate first
    (it failed before: critical_ orthogonal came first and left the probe vanishing)."""
    rx = prescribe("vanishing", {"is_recurrent": True, "cell": "GRU", "depth": 400,
                                 "growth_per_layer": 0.9})
    assert rx[0].code == "gradhealth.remedies.forget_gate_bias_(model, chrono=400)"
    assert "update gate" in rx[0].reason and not any("-> nn.LSTM" in p.code for p in rx)


def test_lstm_vanishing_is_not_told_to_become_an_lstm():
    ev = {"is_recurrent": True, "growth_per_layer": 0.6, "depth": 400, "trend_total": 1e-40, "cell": "LSTM"}
    ps = prescribe("vanishing", ev)
    assert ps[0].code == "gradhealth.remedies.forget_gate_bias_(model, chrono=400)"
    assert any("forget_gate_bias_(model, value=1.0)" in p.code for p in ps)
    assert not any("nn.LSTM" in p.code for p in ps)
    assert not any("lr" in p.code for p in ps)  # never a larger learning rate for a vanishing signal
    short = prescribe("vanishing", {**ev, "depth": 20})
    assert short[0].code == "gradhealth.remedies.forget_gate_bias_(model, value=1.0)"
    # a plain RNN still hears about gated cells; an exploding LSTM gets clipping, not the gate
    assert any("nn.LSTM" in p.code for p in prescribe("vanishing", {**ev, "cell": "RNN_TANH"}))
    boom = prescribe("exploding", {**ev, "growth_per_layer": 1.5, "trend_total": 1e40})
    assert not any("forget_gate" in p.code for p in boom)
    assert any("clip_grad_norm_" in p.code for p in boom) and any("orthogonal_" in p.code for p in boom)


class LSTMNet(nn.Module):
    def __init__(self, hidden=32, din=4):
        super().__init__()
        self.rnn = nn.LSTM(din, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _grad_at_t0(net, x):
    """||dL/dx_0|| for a fixed random projection L of the output: autograd, no gradhealth."""
    x = x.clone().requires_grad_(True)
    y = net(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (g,) = torch.autograd.grad(y, x, w)
    return float(g[:, 0].norm())


def _apply(code, model):
    """Run a ``gradhealth.remedies.f(model, k=literal)`` prescription (parsed, not eval'ed)."""
    call = ast.parse(code, mode="eval").body
    assert isinstance(call, ast.Call) and call.func.value.attr == "remedies"
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return getattr(R, call.func.attr)(model, **kwargs)


def test_rank1_remedy_for_a_vanishing_lstm_restores_the_gradient_at_t0():
    torch.manual_seed(0)
    net = LSTMNet().double()  # float64: the vanished gradient (~1e-85) stays measurable
    x = torch.randn(8, 400, 4, dtype=torch.float64)
    before = probe(net, x, jacobian=False)
    assert before.verdict == "vanishing"
    top = before.prescriptions[0]
    assert "forget_gate_bias_" in top.code
    assert not any("nn.LSTM" in p.code for p in before.prescriptions)
    g_before = _grad_at_t0(net, x)
    _apply(top.code, net)
    g_after = _grad_at_t0(net, x)
    assert g_after > 1e20 * g_before, (g_before, g_after)
    after = probe(net, x, jacobian=False)
    assert after.recurrent[0].gains[0] > 1e20 * before.recurrent[0].gains[0]


def test_apply_prescription_and_cure_accept_the_forget_gate_remedy():
    # the same rank-1 code, applied by gradhealth's own apply_prescription (what `cure` runs):
    # the oracle is the remedy called directly on an identical copy
    import copy

    from gradhealth.remedies import apply_prescription

    torch.manual_seed(0)
    net = LSTMNet().double()
    x = torch.randn(8, 400, 4, dtype=torch.float64)
    top = probe(net, x, jacobian=False).prescriptions[0]
    twin = copy.deepcopy(net)
    torch.manual_seed(1)            # chrono init draws its biases at random: same draws for both
    apply_prescription(top, net)
    torch.manual_seed(1)
    _apply(top.code, twin)
    for (n, a), (_, b) in zip(net.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), n
    from gradhealth.remedies.prescribe import applies_to_model

    assert applies_to_model(top.code)
