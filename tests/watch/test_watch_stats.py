"""The watcher's numbers against explicit computations, across the training setups it must
support (several optimizers, accumulation, frozen layers, sparse, half precision, AMP,
clipping, recurrent modules)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth.watch import steps, watch


def small(seed=0, din=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def keep_outputs(model, skip=()):
    """``({index: output}, hook handles)``: each child's output, its gradient retained (the
    oracle of the output-gradient norms); children of the ``skip`` types are left out."""
    outs = {}

    def keep(k):
        def hook(m, a, o):
            o.retain_grad()
            outs[k] = o
        return hook
    return outs, [m.register_forward_hook(keep(k)) for k, m in enumerate(model) if not isinstance(m, skip)]


def layer_norm(params):
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))


def test_per_layer_statistics_match_explicit_computation():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    expected = []
    with watch(model, opt) as w:
        for _ in range(3):
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            lin = [model[0], model[2], model[4]]
            before = [[p.detach().clone() for p in m.parameters()] for m in lin]
            exp = {"grad": [layer_norm([p.grad for p in m.parameters()]) for m in lin],
                   "param": [layer_norm(m.parameters()) for m in lin],
                   "global": layer_norm([p.grad for p in model.parameters()]), "loss": loss.item()}
            opt.step()
            exp["upd"] = [layer_norm([a - b for a, b in zip(m.parameters(), bb)]) / exp["param"][k]
                          for k, (m, bb) in enumerate(zip(lin, before))]
            opt.zero_grad()
            w.observe(loss)
            expected.append(exp)
    assert [s.step for s in w.history] == [0, 1, 2]
    idx = [w.layers.names.index(n) for n in ("0", "2", "4")]
    for s, exp in zip(w.history, expected):
        assert s.global_grad_norm == pytest.approx(exp["global"], rel=1e-5)
        assert math.isnan(s.global_grad_norm_clipped)      # no clipping
        assert s.loss == pytest.approx(exp["loss"])
        assert s.lr == pytest.approx(0.1)
        np.testing.assert_allclose(s.grad_norm[idx], exp["grad"], rtol=1e-5)
        np.testing.assert_allclose(s.param_norm[idx], exp["param"], rtol=1e-5)
        np.testing.assert_allclose(s.update_ratio[idx], exp["upd"], rtol=1e-4)
        assert (s.nonfinite_grad[idx] == 0).all()
        assert np.isnan(s.grad_norm[w.layers.names.index("1")])   # Tanh has no parameters


def test_output_gradient_and_forward_statistics():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    outs, hs = keep_outputs(model)
    with watch(model, opt) as w:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for h in hs:
        h.remove()
    s = w.history[0]
    for k in range(5):
        i = w.layers.names.index(str(k))
        g = outs[k].grad
        assert s.out_grad_norm[i] == pytest.approx(float(g.norm()), rel=1e-5)
        assert s.out_grad_rms[i] == pytest.approx(float(g.norm()) / math.sqrt(g.numel()), rel=1e-5)
        assert s.act_std[i] == pytest.approx(outs[k].detach().std().item(), rel=1e-5)
    relu = outs[3]
    assert s.dead_frac[w.layers.names.index("3")] == pytest.approx((relu == 0).all(0).float().mean().item())
    tanh = outs[1]
    assert s.sat_frac[w.layers.names.index("1")] == pytest.approx((tanh.abs() >= 0.99).float().mean().item())
    assert np.isnan(s.dead_frac[w.layers.names.index("1")])     # not a ReLU


def test_detail_schedule_and_every():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, every=5, detail_every=steps([0, 7])) as w:
        for _ in range(12):
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert [s.step for s in w.history] == [0, 5, 7, 10]
    assert [s.full for s in w.history] == [True, False, True, False]
    assert not np.isnan(w.history[2].out_grad_norm).all()
    assert np.isnan(w.history[1].out_grad_norm).all() and np.isnan(w.history[1].param_norm).all()
    assert w.step == 12


def test_gradient_accumulation_measures_the_accumulated_gradient():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt) as w:
        for _ in range(2):
            for _ in range(3):
                (model(torch.randn(4, 6)).pow(2).mean() / 3).backward()
            expected = layer_norm([p.grad for p in model.parameters()])
            opt.step()
            opt.zero_grad()
            assert w.step in (0, 1)
    assert len(w.history) == 2 and w.step == 2
    assert w.history[-1].global_grad_norm == pytest.approx(expected, rel=1e-5)
    assert w.events == []


def test_frozen_layers_and_params_without_grad_are_not_measured_not_nonfinite():
    model = small()
    for p in model[0].parameters():
        p.requires_grad_(False)
    model[4].bias.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with watch(model, opt) as w:
        for _ in range(2):
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
            opt.zero_grad()
    s = w.history[-1]
    i0, i4 = w.layers.names.index("0"), w.layers.names.index("4")
    assert np.isnan(s.grad_norm[i0]) and s.nonfinite_grad[i0] == -1
    assert s.grad_norm[i4] == pytest.approx(float(model[4].weight.grad.norm()) if model[4].weight.grad is not None
                                            else s.grad_norm[i4])
    assert w.events == []


def test_several_optimizers_share_one_step_counter():
    model = small()
    o1 = torch.optim.SGD(list(model[0].parameters()) + list(model[2].parameters()), lr=0.01)
    o2 = torch.optim.Adam(model[4].parameters(), lr=1e-3)
    with watch(model, [o1, o2]) as w:
        for _ in range(3):
            model(torch.randn(4, 6)).sum().backward()
            o1.step()
            o2.step()
            o1.zero_grad()
            o2.zero_grad()
    assert w.step == 3 and [s.step for s in w.history] == [0, 1, 2]
    assert not np.isnan(w.history[-1].grad_norm[[w.layers.names.index(n) for n in ("0", "2", "4")]]).any()


def test_optimizer_created_after_watch_is_adopted():
    model = small()
    other = nn.Linear(3, 3)
    with watch(model) as w:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        unrelated = torch.optim.SGD(other.parameters(), lr=0.01)
        for _ in range(3):
            model(torch.randn(4, 6)).sum().backward()
            other(torch.randn(2, 3)).sum().backward()
            opt.step()
            unrelated.step()
            opt.zero_grad()
    assert w.optimizers == [opt]
    assert w.step == 3 and len(w.history) == 3


def test_sparse_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(24, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w:
        idx = torch.tensor([[1, 2, 2], [3, 4, 1]])
        model(idx).sum().backward()
        dense = float(model[0].weight.grad.to_dense().norm())
        opt.step()
        opt.zero_grad()
    s = w.history[0]
    assert s.grad_norm[w.layers.names.index("0")] == pytest.approx(dense, rel=1e-5)
    assert w.events == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters(dtype):
    model = small().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt) as w:
        model(torch.randn(4, 6, dtype=dtype)).float().sum().backward()
        expected = layer_norm([p.grad for p in model.parameters()])
        opt.step()
    assert w.history[0].global_grad_norm == pytest.approx(expected, rel=1e-3)
    assert not [e for e in w.events if e.kind == "internal"]


def test_clipping_reports_norm_before_and_after():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt) as w:
        for _ in range(2):
            model(torch.randn(8, 6)).pow(2).sum().backward()
            total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1))
            opt.step()
            opt.zero_grad()
    s = w.history[-1]
    assert s.global_grad_norm == pytest.approx(total, rel=1e-4)
    assert s.global_grad_norm_clipped == pytest.approx(0.1, rel=1e-4)


def test_amp_grad_scaler_on_cpu_unscaled_statistics_and_skipped_step():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    with watch(model, opt, scaler=scaler) as w:
        for i in range(4):
            x = torch.randn(8, 6)
            if i == 2:
                x[0, 0] = float("inf")     # the scaler finds inf and skips this step
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            expected = layer_norm([p.grad for p in model.parameters()])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            w.observe(loss)
            if i == 0:
                first = expected
    # one more forward closes step 3
    assert [s.step for s in w.history] == [0, 1, 2, 3]
    s0 = w.history[0]
    assert s0.global_grad_norm == pytest.approx(first, rel=1e-3)      # unscaled
    assert math.isnan(s0.global_grad_norm_clipped)                     # unscaling is not clipping
    s2 = w.history[2]
    assert s2.skipped and s2.skip_reason == "scaler"
    assert not [e for e in w.events if e.kind in ("nonfinite", "internal")]


def test_recurrent_per_time_step_gradient_matches_autograd():
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = M()
    x = torch.randn(4, 7, 3)
    xr = x.clone().requires_grad_(True)
    model(xr).sum().backward()
    expected = xr.grad.norm(dim=(0, 2)).numpy()
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with watch(model, opt) as w:
        model(x).sum().backward()
        opt.step()
    np.testing.assert_allclose(w.history[0].time_grad["rnn"], expected, rtol=1e-5)
    assert x.grad is None and not x.requires_grad       # the user's batch was not touched


def test_deferred_reading_gives_the_same_statistics():
    """On an accelerator the end-of-step values ride along with the next logged step's
    transfer; forced here on the CPU, the numbers and events must not change."""
    def go(defer):
        model = small()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        w = watch(model, opt)
        w._readback.defer_always = defer
        for _ in range(5):
            loss = model(torch.randn(8, 6, generator=g)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.observe(loss)
        w.remove()
        return w
    a, b = go(False), go(True)
    assert [s.step for s in a.history] == [s.step for s in b.history] == [0, 1, 2, 3, 4]
    for sa, sb in zip(a.history, b.history):
        assert sa.loss == sb.loss and sa.global_grad_norm == sb.global_grad_norm
        np.testing.assert_array_equal(sa.update_ratio, sb.update_ratio)
        np.testing.assert_array_equal(sa.out_grad_norm, sb.out_grad_norm)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_norms_are_unscaled_and_not_taken_for_clipping(fused):
    # fused optimizers get the still-scaled gradients from GradScaler (plus opt.grad_scale)
    import math

    import gradhealth

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(m.parameters(), lr=0.01, fused=fused)
    sc = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    true = []
    with gradhealth.watch(m, opt, scaler=sc) as w:
        for _ in range(3):
            loss = m(torch.randn(5, 4)).pow(2).mean()
            opt.zero_grad()
            g = torch.autograd.grad(loss, list(m.parameters()), retain_graph=True)  # oracle
            true.append(float(torch.stack([x.norm() for x in g]).norm()))
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
    got = [h.global_grad_norm for h in w.history]
    assert got == pytest.approx(true, rel=1e-4)
    assert all(math.isnan(h.global_grad_norm_clipped) for h in w.history)  # nothing was clipped


@pytest.mark.parametrize("which", ["all", "one layer"])
def test_float64_layers_keep_their_output_gradient_norms(which):
    """A float64 model (or one float64 layer) lost every output-gradient norm: the norm was
    asked for in float32, which torch refuses for a float64 tensor ("should be convertible
    without narrowing"), so each detail step raised an internal event. Oracle: the norms of
    the output gradients kept by the test's own hooks."""
    model = small()
    if which == "all":
        model = model.double()
    else:
        model[2].double()
        model.insert(2, _Cast(torch.float64))
        model.insert(4, _Cast(torch.float32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, hs = keep_outputs(model, skip=_Cast)
    dtype = torch.float64 if which == "all" else torch.float32
    with watch(model, opt) as w:
        model(torch.randn(16, 6, dtype=dtype)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for h in hs:
        h.remove()
    assert not [e for e in w.events if e.kind == "internal"]
    s = w.history[0]
    for k, o in outs.items():
        i = w.layers.names.index(str(k))
        assert s.out_grad_norm[i] == pytest.approx(float(o.grad.norm()), rel=1e-5)


class _Cast(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


def test_a_tied_weight_counts_where_its_norm_goes():
    """A weight shared by two layers was counted in both layers' n_params while its gradient
    norm goes to the first owner only (layer '2' showed 72 parameters and the norm of its 8
    bias entries). Oracle: the model's unique parameter count, and each layer's norm computed
    from the parameters its n_params counts."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    m[2].weight = m[0].weight
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with watch(m, opt) as w:
        m(torch.randn(5, 8)).pow(2).mean().backward()
        g0 = layer_norm([m[0].weight.grad, m[0].bias.grad])
        g2 = layer_norm([m[2].bias.grad])
        opt.step()
        opt.zero_grad()
    t = w.layers
    n = dict(zip(t.names, t.n_params))
    assert sum(t.n_params) == sum(p.numel() for p in m.parameters())   # (parameters() is unique)
    assert n == {"0": 72, "1": 0, "2": 8}
    s = w.history[0]
    assert s.grad_norm[t.names.index("0")] == pytest.approx(g0, rel=1e-5)
    assert s.grad_norm[t.names.index("2")] == pytest.approx(g2, rel=1e-5)
