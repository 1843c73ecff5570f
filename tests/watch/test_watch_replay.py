"""Forensic replay names the right module, direction and step, and leaves no trace."""

import math
import warnings

import torch
from torch import nn

from gradhealth.watch import WatchWarning, watch

from watchnets import InfAfter


class NanGradFn(torch.autograd.Function):
    """Identity forward; its backward returns NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.nan


class NanBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return NanGradFn.apply(x) if self.armed else x


class Block(nn.Module):
    """A container whose own forward code (not a submodule) divides by zero when armed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.armed = False

    def forward(self, x):
        h = self.a(x)
        if self.armed:
            h = h / 0.0 * 0.0     # 0/0 -> NaN, in functional code
        return self.b(h)


def model_with(mid):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), mid, nn.Linear(8, 3))


def train_until(model, armed_at, steps=6, arm=None, loss_fn=None, x_fn=None, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt, **kw) as w:
            for i in range(steps):
                if arm is not None:
                    arm(model, i >= armed_at)
                x = torch.randn(16, 6, generator=g)
                if x_fn is not None:
                    x = x_fn(i, x)
                out = model(x)
                loss = (loss_fn or (lambda o: o.pow(2).mean()))(out)
                loss.backward()
                opt.step()
                opt.zero_grad()
                w.observe(loss)
    return w


def arm_mid(model, on):
    model[2].armed = on


def test_forward_culprit_named_at_the_right_step():
    w = train_until(model_with(InfAfter()), 3, arm=arm_mid)
    r = w.replays[0]
    assert (r.step, r.found, r.direction, r.module, r.module_type, r.cause) == \
        (3, True, "forward", "2", "InfAfter", "op_output")
    assert r.stats["input"]["max_abs_finite"] > 0 and r.stats["output"]["inf"] > 0


def test_backward_culprit_named():
    w = train_until(model_with(NanBackward()), 2, arm=arm_mid)
    r = w.replays[0]
    assert (r.step, r.direction, r.module, r.cause) == (2, "backward", "2", "input_gradient")
    assert "NanBackward" in r.summary


def test_functional_code_in_a_parent_is_blamed_on_the_parent():
    w = train_until(model_with(Block()), 1, arm=arm_mid)
    r = w.replays[0]
    assert (r.step, r.direction, r.module, r.cause) == (1, "forward", "2", "functional_code")
    assert "'2.b'" in r.summary


def test_nonfinite_input_batch():
    def x_fn(i, x):
        if i == 4:
            x[3, 2] = math.nan
        return x
    w = train_until(model_with(nn.Identity()), 99, x_fn=x_fn)
    r = w.replays[0]
    assert (r.step, r.direction, r.module, r.cause) == (4, "input", None, "nonfinite_input")
    assert r.stats["nan"] == 1


def test_loss_function_blamed_when_outputs_are_finite():
    def loss_fn(out):
        return torch.log(out - out.max()).mean()    # log(0) and log(<0): outside the model
    w = train_until(model_with(nn.Identity()), 0, loss_fn=loss_fn, steps=1)
    r = w.replays[0]
    assert (r.step, r.direction, r.cause) == (0, "loss", "loss_gradient")


def test_nonfinite_parameters_are_the_cause_after_a_bad_update():
    model = model_with(nn.Identity())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            for i in range(3):
                if i == 2:
                    with torch.no_grad():
                        model[3].weight[0, 0] = math.nan
                model(torch.randn(4, 6)).sum().backward()
                opt.step()
                opt.zero_grad()
    r = w.replays[0]
    assert (r.step, r.module, r.cause) == (2, "3", "nonfinite_params")


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_replay_with_gradient_accumulation_finds_the_micro_batch():
    model = model_with(Exp())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            for i in range(2):
                for k in range(3):
                    x = torch.randn(4, 6)
                    if i == 1 and k == 2:
                        x = x * 1e4          # exp overflows on this micro-batch only
                    model(x).sum().backward()
                opt.step()
                opt.zero_grad()
    r = w.replays[0]
    assert (r.step, r.micro_batch, r.module, r.module_type) == (1, 2, "2", "Exp")


def test_replay_leaves_rng_buffers_grads_and_params_untouched():
    torch.manual_seed(0)

    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(8)
            self.drop = nn.Dropout(0.5)
            self.lin = nn.Linear(8, 8)
            self.armed = False

        def forward(self, x):
            h = self.lin(self.drop(self.bn(x)))
            return h * math.inf if self.armed else h

    model = nn.Sequential(nn.Linear(6, 8), Drop(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = {}

    def probe(opt_, args, kwargs):       # runs after the watcher's pre-hook (and its replay)
        seen["grads"] = [p.grad.clone() for p in model.parameters()]
        seen["bn"] = model[1].bn.running_mean.clone()
        seen["rng"] = torch.get_rng_state().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            h = opt.register_step_pre_hook(probe)
            model[1].armed = True
            model(torch.randn(16, 6)).sum().backward()
            grads = [p.grad.clone() for p in model.parameters()]
            bn = model[1].bn.running_mean.clone()
            rng = torch.get_rng_state().clone()
            opt.step()
            h.remove()
    assert w.replays and w.replays[0].module == "1"
    assert all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() for a, b in zip(grads, seen["grads"]))
    assert torch.equal(bn, seen["bn"]) and torch.equal(rng, seen["rng"])


def test_replay_disabled_keeps_no_references():
    model = model_with(InfAfter())
    w = train_until(model, 1, arm=arm_mid, steps=3, replay=False)
    assert w.replays == [] and w._it.captures == []
    assert [e for e in w.events if e.kind == "nonfinite"]


class SqrtAtZero(nn.Module):
    """A functional sqrt at 0 in the *parent*: d sqrt(u)/du = inf there, and the two paths of
    ``u = h - h`` give the gradient w.r.t. ``h`` inf - inf = NaN (forward stays finite)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.after = nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)
        return self.after(torch.sqrt(h - h) + h)


def test_backward_nan_in_functional_code_names_the_module_whose_forward_holds_it():
    # the sqrt is in the forward of SqrtAtZero ("1"), applied to the output of its child "1.lin":
    # the enclosing module is named (issue 9: "name the container rather than its last child"),
    # and the summary still says whose output's gradient went bad
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), SqrtAtZero(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            model(torch.randn(16, 6)).pow(2).mean().backward()
            opt.step()
    r = w.replays[0]
    assert (r.direction, r.module, r.cause) == ("backward", "1", "functional_code")
    assert "'1.lin'" in r.summary and "in the forward of '1'" in r.summary


class _OnceNaN(nn.Module):
    """NaN in its output on its 3rd call only: a fault that a re-run does not reproduce."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * float("nan") if self.calls == 3 else x


def test_replay_says_whether_the_fault_reproduces():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _OnceNaN(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            for _ in range(4):
                opt.zero_grad()
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
    transient = w.replays[0]
    assert transient.step == 2 and not transient.found and transient.transient
    assert "did not reproduce" in transient.summary and "transient" in transient.summary
    # a deterministic fault (the data) reproduces
    torch.manual_seed(0)
    m2 = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    o2 = torch.optim.SGD(m2.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(m2, o2) as w2:
            m2(x).pow(2).mean().backward()
            o2.step()
    assert w2.replays[0].found and not w2.replays[0].transient
