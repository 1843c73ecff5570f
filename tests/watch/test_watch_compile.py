"""watch on a torch.compile'd model: the eager numbers and names, the same NaN diagnosis, no
graph break added, nothing raised into training.

Every case runs the compiled model next to an identical eager copy: the oracle is the eager
run (and, for the gradient norms, the norms computed by hand from the eager copy's ``.grad``).
Compiled with ``backend="eager"`` (dynamo's tracing, no code generation: fast); the gradient
case also with ``"aot_eager"`` (AOT autograd: the backward is traced too). Two ways to compile:
``torch.compile(model)`` then watch the compiled wrapper (``cw``), and watch the model then
compile it (``wc``: the watcher's root hooks then run inside the compiled region).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from gradhealth.store import load_run
from gradhealth.watch import WatchWarning, never, watch

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


class Net(nn.Module):
    """A user-defined root (dynamo compiles its forward frame) around a Sequential body."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


def seq():
    """A torch.nn root (dynamo inlines its call, hooks included, into the top frame)."""
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)) for _ in range(n)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


HOWS = ("cw", "wc", "inplace", "sub", "sub-cw")


def compile_model(model, how: str, backend: str = "eager"):
    """Compile ``model`` as ``how`` says; returns what the training loop calls."""
    if how in ("cw", "wc"):
        return torch.compile(model, backend=backend)
    if how == "inplace":
        model.compile(backend=backend)
        return model
    name, child = next(iter(model.named_children()))   # "sub", "sub-cw": the first child replaced
    setattr(model, name, torch.compile(child, backend=backend))
    return model


def compiled_watch(model, opt, how: str, backend: str = "eager", **options):
    """``(the callable the loop trains, the watcher)``: ``cw`` compiles, then watches the
    compiled wrapper; ``wc`` / ``inplace`` (``model.compile()``) / ``sub`` (the first child
    replaced by ``torch.compile(child)``) watch the model, then compile; ``sub-cw`` replaces the
    first child, then watches."""
    if how in ("cw", "sub-cw"):
        cm = compile_model(model, how, backend)
        return cm, watch(cm, opt, **options)
    w = watch(model, opt, **options)
    return compile_model(model, how, backend), w


def train_step(run, opt, x, y, w=None, before_step=None):
    loss = nn.functional.mse_loss(run(x), y)
    loss.backward()
    if before_step is not None:
        before_step()
    opt.step()
    opt.zero_grad()
    if w is not None:
        w.observe(loss)


def layer_grad_norms(model, names):
    """The oracle: per-layer 2-norm of the gradients, by hand from ``.grad``."""
    mods = dict(model.named_modules())
    out = []
    for n in names:
        gs = [p.grad for p in mods[n].parameters(recurse=False) if p.grad is not None]
        out.append(math.sqrt(sum(float(g.double().square().sum()) for g in gs)) if gs else math.nan)
    return out


def internal(w):
    return [e.message for e in w.events if e.kind == "internal"]


@pytest.mark.parametrize("how,backend", [*((h, "eager") for h in HOWS), ("cw", "aot_eager")])
def test_grad_norms_and_names_equal_the_eager_run(how, backend):
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run, w = compiled_watch(model, opt, how, backend)
        we = watch(twin, topt)
        oracle = []
        try:
            for x, y in batches(5):
                train_step(run, opt, x, y, w)
                train_step(twin, topt, x, y, we,
                           before_step=lambda: oracle.append(layer_grad_norms(twin, we.layers.names)))
        finally:
            w.remove()   # (the last step is recorded)
            we.remove()
    assert w.layers.names == we.layers.names == ("body.0", "body.1", "body.2", "body.3", "head")
    assert len(w.history) == len(we.history) == 5
    for s, (hc, he, want) in enumerate(zip(w.history, we.history, oracle)):
        assert hc.step == he.step == s
        assert hc.grad_norm == pytest.approx(want, rel=1e-5, nan_ok=True)
        assert he.grad_norm == pytest.approx(want, rel=1e-5, nan_ok=True)
        assert hc.global_grad_norm == pytest.approx(he.global_grad_norm, rel=1e-5)
        assert list(hc.nonfinite_grad) == list(he.nonfinite_grad)
    # the optimizer-side detail statistics are still there (step 0 is a detail step) ...
    h0, e0 = w.history[0], we.history[0]
    assert h0.full and e0.full
    assert h0.param_norm == pytest.approx(e0.param_norm, rel=1e-5, nan_ok=True)
    assert h0.update_ratio == pytest.approx(e0.update_ratio, rel=1e-4, nan_ok=True)
    assert not math.isnan(h0.update_ratio[0])
    # ... the forward statistics come from the shadow forward, equal to the eager ones ...
    assert not math.isnan(e0.act_std[1])
    for f in ("act_std", "dead_frac", "sat_frac"):
        assert getattr(h0, f) == pytest.approx(getattr(e0, f), rel=1e-5, abs=1e-7, nan_ok=True)
    assert w.layers.depth == we.layers.depth == (0, 1, 2, 3, 4)
    # ... the output-gradient norms are not collected, and one warning says so and why
    assert not math.isnan(e0.out_grad_norm[0]) and all(math.isnan(v) for v in h0.out_grad_norm)
    said = [str(c.message) for c in caught if issubclass(c.category, WatchWarning) and "compiled" in str(c.message)]
    assert len(said) == 1
    assert ("a compiled submodule" in said[0]) == how.startswith("sub")
    assert "not collected: gradient norms w.r.t. layer outputs." in said[0]
    assert "recurrent" not in said[0]   # no recurrent layer in this model: not named
    assert internal(w) == [] and internal(we) == []


def _nan_run(lin, run, opt, w, k, n=6):
    """Train n steps; at step k a NaN in ``lin``'s weight (the middle Linear) for that step only."""
    for s, (x, y) in enumerate(batches(n, seed=3)):
        saved = lin.weight.detach().clone()
        if s == k:
            with torch.no_grad():
                lin.weight[0, 0] = math.nan
        train_step(run, opt, x, y, w)
        with torch.no_grad():
            lin.weight.copy_(saved)   # the guard skipped the step; the planted NaN goes too
    return [(e.step, e.kind, e.layer) for e in w.events if e.kind in ("guard", "nonfinite", "internal")]


@pytest.mark.parametrize("how", HOWS)
def test_a_nan_is_diagnosed_at_the_same_step_and_layer_as_eagerly(how):
    torch.manual_seed(1)
    model = Net()
    twin = copy.deepcopy(model)
    lin, tlin = model.body[2], twin.body[2]   # held before compiling (``sub`` wraps the body)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        run, w = compiled_watch(model, opt, how, on_nonfinite="skip", detail_every=never())
        we = watch(twin, topt, on_nonfinite="skip", detail_every=never())
        try:
            got = _nan_run(lin, run, opt, w, k=3)
            want = _nan_run(tlin, twin, topt, we, k=3)
            # the eager oracle: every event at step 3, the guard's naming the planted layer
            assert (3, "guard", "body.2") in want and {e[0] for e in want} == {3}
            assert not any(kind == "internal" for _, kind, _ in want)
            assert got == want
            assert [r.module for r in w.replays] == [r.module for r in we.replays] == ["body.2"]
            hc, he = w.history[3], we.history[3]
            assert hc.skipped and he.skipped
            assert list(hc.nonfinite_grad) == list(he.nonfinite_grad)
            assert hc.nonfinite_grad[2] > 0
            # the skipped step left both models equal: the parameters still agree
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p, q)
        finally:
            w.remove()
            we.remove()


def _graph_counts(make, how: str, watched: bool, steps: int = 8):
    """(graph breaks after the warm-up steps, breaks in the steady state, graphs, ops captured)."""
    dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        if watched:
            run, w = compiled_watch(model, opt, how)
        else:
            run = compile_model(model, how)
        data = batches(steps, seed=5)
        try:
            for x, y in data[:3]:   # step 0 (detail) compiles, steps 1, 2 settle
                train_step(run, opt, x, y, w)
            warm = sum(counters["graph_break"].values())
            for x, y in data[3:]:
                train_step(run, opt, x, y, w)
            steady = sum(counters["graph_break"].values()) - warm
            assert w is None or internal(w) == []
        finally:
            if w is not None:
                w.remove()
    return warm, steady, counters["stats"]["unique_graphs"], counters["stats"]["calls_captured"]


@pytest.mark.parametrize("make", [Net, seq], ids=["user-root", "sequential-root"])
@pytest.mark.parametrize("how", HOWS)
def test_no_graph_break_added(make, how):
    bare = _graph_counts(make, how, watched=False)
    assert bare[:2] == (0, 0)
    if how == "inplace" and make is seq:
        # torch 2.13 compiles nothing for model.compile() of a torch.nn.Sequential that has no
        # hook (it calls the forward directly); with the watcher's root hooks it compiles the
        # Sequential's forward: the reference is then torch.compile(model)'s one graph
        assert bare[2] == 0
        bare = _graph_counts(make, "cw", watched=False)
    assert bare[2] >= 1
    warm, steady, graphs, ops = _graph_counts(make, how, watched=True)
    assert steady == 0                     # nothing added in the steady state
    assert (graphs, ops) == bare[2:]       # the same graphs with the same ops: no hook traced in
    if how in ("cw", "sub", "sub-cw"):
        assert warm == 0                   # the watcher's hooks run outside the compiled region
    # wc / inplace: each root hook, met once while dynamo traces, is one call it skips


def test_a_compiled_models_run_record_has_the_users_names(tmp_path):
    torch.manual_seed(0)
    model = seq()
    cm = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(cm, opt, on_nonfinite="skip", run_dir=tmp_path / "run") as w:
            for x, y in batches(2):
                train_step(cm, opt, x, y, w)
    run = load_run(tmp_path / "run")
    eager = ["0", "1", "2", "3", "4"]   # the Sequential's own names, no "_orig_mod." prefix
    assert [d["name"] for d in run.layers] == eager == list(w.layers.names)
    assert run.meta["model"] == "Sequential"
    assert len(run.steps) == 2 and internal(w) == []


def test_an_eager_user_does_not_import_dynamo():
    # (an optimizer's constructor imports torch._dynamo in torch 2.13: the watcher is given none)
    code = ("import sys, torch, gradhealth\n"
            "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))\n"
            "w = gradhealth.watch(m)\n"
            "for _ in range(2):\n"
            "    m(torch.randn(3, 4)).sum().backward()\n"
            "w.remove()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("how", ["cw", "sub", "sub-cw"])
def test_a_nan_batch_restores_the_batchnorm_buffers_under_their_eager_names(how):
    torch.manual_seed(2)
    model = BNNet()
    twin = copy.deepcopy(model)
    bn = model.body[1]                   # held before compiling (``sub`` wraps the body)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05)
    data = batches(4, seed=7)
    data[2][0][0, 0] = math.nan          # step 2: a NaN in the batch poisons the running stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        run, w = compiled_watch(model, opt, how, on_nonfinite="skip", detail_every=never())
        we = watch(twin, topt, on_nonfinite="skip", detail_every=never())
        try:
            for x, y in data:
                train_step(run, opt, x, y, w)
                train_step(twin, topt, x, y, we)
        finally:
            w.remove()
            we.remove()
    skips = [e for e in w.events if e.kind == "guard"]
    eskips = [e for e in we.events if e.kind == "guard"]
    assert [e.step for e in skips] == [e.step for e in eskips] == [2]
    restored = eskips[0].evidence["buffers_restored"]
    assert set(restored) >= {"body.1.running_mean", "body.1.running_var"}   # the eager oracle
    assert skips[0].evidence["buffers_restored"] == restored
    # restored, the running statistics are finite and equal the eager run's
    for name in ("running_mean", "running_var"):
        mine, theirs = getattr(bn, name), getattr(twin.body[1], name)
        assert torch.isfinite(theirs).all()
        torch.testing.assert_close(mine, theirs)
    assert internal(w) == []


class DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("how", HOWS)
def test_forward_statistics_of_a_compiled_model_equal_the_eager_ones(how):
    """The shadow forward of a detail step draws the same dropout masks and leaves BatchNorm's
    running statistics and the RNG as they were: the compiled run stays the eager run."""
    torch.manual_seed(4)
    model = DropNet()
    twin = copy.deepcopy(model)
    bn = model.body[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        run, w = compiled_watch(model, opt, how, detail_every=1)
        we = watch(twin, topt, detail_every=1)
        try:
            for s, (x, y) in enumerate(batches(4, seed=9)):
                torch.manual_seed(100 + s)
                train_step(run, opt, x, y, w)
                torch.manual_seed(100 + s)
                train_step(twin, topt, x, y, we)
        finally:
            w.remove()
            we.remove()
    assert len(w.history) == len(we.history) == 4
    for hc, he in zip(w.history, we.history):
        assert hc.full and he.full
        assert hc.grad_norm == pytest.approx(he.grad_norm, rel=1e-5, nan_ok=True)   # same masks
        for f in ("act_std", "dead_frac", "sat_frac"):
            assert getattr(hc, f) == pytest.approx(getattr(he, f), rel=1e-5, abs=1e-7, nan_ok=True), f
        names = list(we.layers.names)
        assert not math.isnan(he.dead_frac[names.index("body.2")])   # ReLU
        assert not math.isnan(he.sat_frac[names.index("body.5")])    # Tanh
    for name in ("running_mean", "running_var", "num_batches_tracked"):   # updated once a step
        torch.testing.assert_close(getattr(bn, name), getattr(twin.body[1], name))
    assert int(bn.num_batches_tracked) == 4
    assert internal(w) == []


@pytest.mark.parametrize("how", [None, "cw"])
def test_a_skipped_nan_batch_restores_batchnorm_statistics_without_the_replay(how):
    """BatchNorm updates its running statistics on CPU without a new tensor version: the skip
    must compare values (it used to restore them only when the replay's own buffer restore had
    bumped the version, so with replay=False the NaN statistics stayed)."""
    torch.manual_seed(3)
    model = BNNet()
    bn = model.body[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches(3, seed=8)
    data[1][0][0, 0] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        if how is None:
            run, w = model, watch(model, opt, on_nonfinite="skip", replay=False, detail_every=never())
        else:
            run, w = compiled_watch(model, opt, how, on_nonfinite="skip", replay=False, detail_every=never())
        try:
            before = {}
            for s, (x, y) in enumerate(data):
                if s == 1:
                    before = {n: getattr(bn, n).clone() for n in ("running_mean", "running_var")}
                train_step(run, opt, x, y, w)
                if s == 1:   # the oracle: the statistics as they were before the NaN batch
                    for n, b in before.items():
                        torch.testing.assert_close(getattr(bn, n), b)
        finally:
            w.remove()
    (ev,) = [e for e in w.events if e.kind == "guard"]
    assert ev.step == 1
    assert {"body.1.running_mean", "body.1.running_var"} <= set(ev.evidence["buffers_restored"])
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    assert internal(w) == []
