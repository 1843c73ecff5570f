"""Shared pieces of the integration tests: a tiny MLP, generated data, a NaN planted in one
layer's output at one training step, the oracle (the same training in a plain loop under
gradhealth.watch), and comparisons of watcher states and stored runs. (A module of its own, not
conftest.py: `from conftest import` finds another folder's conftest when pytest is given
tests/integrations together with tests/watch.)"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

NAN_STEP = 5          # the training step whose forward gets the NaN
NAN_LAYER = "net.2"   # the module that emits it (the second Linear)
N_STEPS = 12
BATCH = 16


class Net(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear; the watched layer names are net.0, net.2, net.4 (+ ReLUs)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def make_data(n_batches: int, seed: int = 1):
    """``n_batches`` batches of (x, y) regression data, generated (no download)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * BATCH, 8, generator=g)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].prod(1)], 1)
    return x, y


def plant_nan(module: nn.Module, current_step, at: int = NAN_STEP):
    """A forward hook on ``module`` that sets one output entry to NaN while ``current_step()`` is
    ``at`` (so a forensic replay of that step sees it again). Returns the hook handle."""

    def hook(_mod, _inp, out):
        if current_step() == at:
            out = out.clone()
            out[0, 0] = float("nan")
        return out

    return module.register_forward_hook(hook)


def plain_loop(run_dir=None, accumulate: int = 1, steps: int = N_STEPS, **watch_options):
    """The oracle: Net trained by SGD in a plain loop under gradhealth.watch, with the NaN
    planted in NAN_LAYER at optimizer step NAN_STEP. Returns the (removed) watcher."""
    import gradhealth

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = make_data(steps * accumulate)
    state = {"step": 0}
    plant_nan(model.get_submodule(NAN_LAYER), lambda: state["step"])
    with gradhealth.watch(model, opt, run_dir=run_dir, **watch_options) as w:
        for s in range(steps):
            state["step"] = s
            loss_sum = 0.0
            for a in range(accumulate):
                i = (s * accumulate + a) * BATCH
                loss = nn.functional.mse_loss(model(x[i:i + BATCH]), y[i:i + BATCH]) / accumulate
                loss.backward()
                loss_sum = loss_sum + loss.detach()
            opt.step()
            opt.zero_grad()
            w.observe(loss_sum)
    return w


def first_nonfinite(events):
    """(step, kind, layer) of the first nonfinite event."""
    for e in events:
        if e.kind == "nonfinite":
            return e.step, e.kind, e.layer
    return None


def assert_close(ours, theirs, path="state"):
    """Nested plain data equal, floats to rel 1e-5 (NaN == NaN)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(ours, key=repr) == sorted(theirs, key=repr), path
        for k in theirs:
            assert_close(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(theirs, float) and not isinstance(ours, bool):
        assert isinstance(ours, (int, float)), path
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, rel=1e-5, abs=1e-12), path
    else:
        assert ours == theirs, path


def assert_same_store(got, want):
    """Two stored runs (gradhealth.store.Run) hold the same run: layers, every step column but the
    wall time, every layer row, the events (step, kind, layer, severity, since), both finished."""
    assert got.finished and want.finished
    assert got.layers == want.layers
    drop = ("time",)
    assert [r["step"] for r in got.steps] == [r["step"] for r in want.steps]
    assert_close([{k: v for k, v in r.items() if k not in drop} for r in got.steps],
                 [{k: v for k, v in r.items() if k not in drop} for r in want.steps], "steps")
    assert_close(got.layer_stats, want.layer_stats, "layer_stats")
    key = [(e.step, e.kind, e.layer, e.severity, e.since) for e in want.events]
    assert [(e.step, e.kind, e.layer, e.severity, e.since) for e in got.events] == key
