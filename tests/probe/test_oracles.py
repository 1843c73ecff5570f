"""The probe's numbers against independent oracles: slow per-layer loops, full Jacobians on
small models, mean-field theory for wide random MLPs, and hand-written recurrences."""

import copy
import math

import pytest
import torch
from probenets import mlp
from torch import nn

from gradhealth.probe import probe
from gradhealth.probe.recurrent import replay


def _jac(fn, x):
    return torch.autograd.functional.jacobian(fn, x).reshape(fn(x).numel(), x.numel())


def test_loss_gradients_match_a_slow_per_layer_loop():
    net = mlp(5, 12, nn.Tanh, din=6, dout=3)
    x, y = torch.randn(10, 6), torch.randn(10, 3)
    r = probe(net, x, y, loss_fn=nn.functional.mse_loss, jacobian=False)
    assert r.loss["kind"] == "user"
    assert r.loss["value"] == pytest.approx(float(nn.functional.mse_loss(net(x), y).detach()))
    ref = copy.deepcopy(net)
    nn.functional.mse_loss(ref(x), y).backward()
    linears = [k for k, m in enumerate(ref) if isinstance(m, nn.Linear)]
    for k in linears:
        lr = r.layer(str(k))
        want = math.sqrt(sum(float(p.grad.square().sum()) for p in ref[k].parameters()))
        assert lr.grad_norm == pytest.approx(want, rel=1e-5)
        wn = math.sqrt(sum(float(p.detach().square().sum()) for p in ref[k].parameters()))
        assert lr.weight_norm == pytest.approx(wn, rel=1e-6)
        # dL/d(output of layer k), one layer at a time
        h = x
        for j in range(k + 1):
            h = net[j](h)
        out = h
        for j in range(k + 1, len(net)):
            h = net[j](h)
        g, = torch.autograd.grad(nn.functional.mse_loss(h, y), out)
        assert lr.out_grad_norm == pytest.approx(float(g.norm()), rel=1e-5)


def test_gains_and_gsc_match_full_jacobians():
    torch.manual_seed(1)
    net = mlp(4, 8, nn.Tanh, din=5, dout=3)
    x = torch.randn(3, 5)
    r = probe(net, x, n_probes=400, jacobian=False)
    f_out = net(x).detach()
    for k, m in enumerate(net):
        if not isinstance(m, nn.Linear):
            continue
        f_k = net[:k + 1](x).detach()
        J = _jac(lambda h, k=k: net[k + 1:](h), f_k)
        gain = math.sqrt(float(J.square().sum()) / f_out.numel())
        gsc = math.sqrt(float(J.square().sum()) / f_k.numel()) * float(f_k.norm()) / float(f_out.norm())
        lr = r.layer(str(k))
        assert lr.gain == pytest.approx(gain, rel=0.12), k
        assert lr.gsc == pytest.approx(gsc, rel=0.12), k


def test_jacobian_spectrum_matches_svd_of_the_full_jacobian():
    torch.manual_seed(2)
    net = mlp(6, 24, nn.Tanh, sigma_w2=2.0, din=10, dout=6)
    x = torch.randn(12, 10)
    r = probe(net, x, jacobian_batch=4, top_k=3, lanczos_steps=30)
    J = _jac(net, x[:4])
    sv = torch.linalg.svdvals(J.double())
    s = r.jacobian
    assert s.examples == 4 and s.shape == (24, 40) and s.operator == "J J^T"
    assert s.top[0] == pytest.approx(float(sv[0]), rel=1e-3)
    for got, want in zip(s.top, sv[:3].tolist()):
        assert got == pytest.approx(want, rel=0.03)
    rms = math.sqrt(float(sv.square().sum()) / min(J.shape))
    assert s.rms == pytest.approx(rms, rel=0.3)
    assert s.spread == pytest.approx(s.top[0] / s.rms)


@pytest.mark.parametrize("act,sw2,sb2", [(nn.Tanh, 1.5, 0.05), (nn.Tanh, 0.8, 0.0), (nn.ReLU, 1.5, 0.0)])
def test_measured_chi_1_matches_mean_field_theory_for_wide_random_mlps(act, sw2, sb2):
    pytest.importorskip("gradhealth.theory.meanfield")
    torch.manual_seed(3)
    net = mlp(16, 256, act, sigma_w2=sw2, sigma_b2=sb2, din=256)
    r = probe(net, torch.randn(64, 256), jacobian=False)
    mf = r.meanfield
    assert mf is not None and mf.depth == 15
    assert mf.sigma_w2 == pytest.approx(sw2, rel=0.02)
    assert mf.chi_1_measured == pytest.approx(mf.chi_1_theory, rel=0.1)


def _cell_oracle(module, x, g_out, g_hn):
    """dL/dh_t from an independent implementation: the matching nn.*Cell in a Python loop."""
    cell_cls = {"RNN_TANH": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}[module.mode]
    cell = cell_cls(module.input_size, module.hidden_size)
    with torch.no_grad():
        cell.weight_ih.copy_(module.weight_ih_l0)
        cell.weight_hh.copy_(module.weight_hh_l0)
        cell.bias_ih.copy_(module.bias_ih_l0)
        cell.bias_hh.copy_(module.bias_hh_l0)
    B, T = x.shape[0], x.shape[1]
    h = torch.zeros(B, module.hidden_size)
    c = torch.zeros(B, module.hidden_size)
    hs = []
    for t in range(T):
        if module.mode == "LSTM":
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
        hs.append(h)
    out = torch.stack(hs, dim=1)
    L = (out * g_out).sum() + (hs[-1] * g_hn).sum()
    return torch.autograd.grad(L, hs)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_rnn_replay_gradients_match_a_cell_loop(cls):
    torch.manual_seed(4)
    m = cls(3, 8, batch_first=True)
    x = torch.randn(5, 12, 3)
    real = m(x)
    real_outputs = (real[0], real[1][0] if cls is nn.LSTM else real[1])
    g_out, g_hn = torch.randn(5, 12, 8), torch.randn(1, 5, 8)
    with torch.enable_grad():
        outs, hidden, check = replay(m, (x,), {}, real_outputs)
    assert check < 1e-5
    torch.testing.assert_close(outs[0], real[0], rtol=1e-5, atol=1e-6)
    hs = hidden[(0, 0)]
    got = torch.autograd.grad([outs[0], outs[1]], hs, [g_out, g_hn])
    want = _cell_oracle(m, x, g_out, g_hn[0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_rnn_replay_stacked_bidirectional_reproduces_the_module(cls):
    torch.manual_seed(5)
    kw = {"proj_size": 4} if cls is nn.LSTM else {}
    m = cls(3, 8, num_layers=2, bidirectional=True, **kw)  # sequence first
    x = torch.randn(7, 2, 3)
    real = m(x)
    flat = (real[0],) + (tuple(real[1]) if cls is nn.LSTM else (real[1],))
    with torch.enable_grad():
        outs, hidden, check = replay(m, (x,), {}, flat)
    assert check < 1e-4
    for a, b in zip(outs, flat):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert sorted(hidden) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_residual_ratios_match_their_definitions():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 6)
            self.f1, self.f2 = nn.Linear(6, 10), nn.Linear(10, 6)

        def branch(self, h):
            return self.f2(torch.tanh(self.f1(h)))

        def forward(self, x):
            h = self.inp(x)
            return h + self.branch(h)

    torch.manual_seed(6)
    net = Res()
    x = torch.randn(4, 6)
    r = probe(net, x, n_probes=400, jacobian=False)
    (block,) = r.residual.blocks
    h = net.inp(x).detach()
    assert block.forward_ratio == pytest.approx(float(net.branch(h).detach().norm() / h.norm()), rel=1e-5)
    assert block.branch_layers == ("f1", "f2")
    J = _jac(net.branch, h)
    assert block.backward_ratio == pytest.approx(math.sqrt(float(J.square().sum()) / h.numel()), rel=0.12)
    b = block.backward_ratio
    assert r.residual.effective_depth == pytest.approx(b * b / (1 + b * b))
    assert r.residual.effective_layers == pytest.approx(2 * b * b / (1 + b * b))
