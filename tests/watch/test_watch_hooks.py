"""Attaching and detaching, and the faults the watcher must survive or refuse clearly."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim import optimizer as optim_mod

from gradhealth.errors import ModelError, ParameterError
from gradhealth.watch import WatchWarning, default_detail_schedule, every, log_spaced, never, steps, watch
from gradhealth.watch.instruments import Instruments


def small(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def hook_count(model, opt):
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
        n += len(m._forward_hooks_with_kwargs) + len(m._forward_pre_hooks_with_kwargs)
    for p in model.parameters():
        n += len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    n += len(optim_mod._global_optimizer_pre_hooks) + len(optim_mod._global_optimizer_post_hooks)
    n += int("step" in vars(opt))   # a guard replaces step on the instance
    return n


def run(model, opt, w, steps=3):
    for _ in range(steps):
        out = model(torch.randn(4, 6))
        out.sum().backward()
        opt.step()
        opt.zero_grad()
        w.observe(out.sum())


@pytest.mark.parametrize("policy", ["warn", "skip", "rollback", "raise"])
def test_no_hook_remains_after_exit(policy):
    model = small()
    opt = torch.optim.Adam(model.parameters())
    assert hook_count(model, opt) == 0
    with watch(model, opt, on_nonfinite=policy) as w:
        assert hook_count(model, opt) > 0
        run(model, opt, w)
    assert hook_count(model, opt) == 0
    assert not w.active and "step" not in vars(opt)


def test_remove_is_idempotent_and_detaches_global_hooks_and_on_exception():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with watch(model, on_nonfinite="skip") as w:   # optimizer=None: global hooks
            run(model, opt, w, 1)
            raise RuntimeError("boom")
    assert hook_count(model, opt) == 0
    w.remove()
    w.remove()
    # a retained output tensor's hook is removed too: backward after removal is silent
    with watch(model, opt) as w2:
        out = model(torch.randn(4, 6))
    out.sum().backward()
    assert w2.events == []


def test_detail_step_module_hooks_are_removed_after_the_step():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, detail_every=steps([0])) as w:
        run(model, opt, w, 2)
        assert all(len(m._forward_hooks) == 0 for m in model if m is not model)


def test_second_watch_on_same_model_is_a_clear_error():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt):
        with pytest.raises(ModelError, match="already watched"):
            watch(model, opt)
        with pytest.raises(ModelError, match="already watched"):
            watch(model[2])          # a part of a watched model
    with watch(model, opt):          # fine once the first one is gone
        pass


def test_observe_non_scalar_and_bad_arguments():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w:
        with pytest.raises(ParameterError, match="'loss' parameter of Watcher.observe must be a scalar"):
            w.observe(torch.ones(4))
        with pytest.raises(ParameterError):
            w.observe("1.0")
        w.observe(torch.ones(1))
        w.observe(2.5)
    with pytest.raises(ParameterError, match="on_nonfinite"):
        watch(model, opt, on_nonfinite="ignore")
    with pytest.raises(ParameterError, match="every"):
        watch(model, opt, every=0)
    with pytest.raises(ParameterError, match="model"):
        watch("model")
    with pytest.raises(ParameterError, match="optimizer"):
        watch(model, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(ParameterError, match="rollback_storage"):
        watch(model, opt, on_nonfinite="rollback", rollback_storage="disk")


def test_exception_inside_a_hook_is_reported_once_and_training_continues(monkeypatch):
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def broken(*a, **k):
        raise ValueError("injected")
    monkeypatch.setattr(Instruments, "measure_grads", broken)
    with pytest.warns(WatchWarning, match="injected") as rec:
        with watch(model, opt) as w:
            run(model, opt, w, 5)
    assert len([r for r in rec if "injected" in str(r.message)]) == 1
    internal = [e for e in w.events if e.kind == "internal"]
    assert len(internal) == 1 and internal[0].evidence["site"] == "optimizer"
    assert w.step == 5


def test_model_changing_structure_mid_run():
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w:
        run(model, opt, w, 2)
        model.append(nn.Linear(3, 3))
        opt.add_param_group({"params": model[5].parameters()})
        run(model, opt, w, 2)
    info = [e for e in w.events if e.kind == "internal"]
    assert len(info) == 1 and info[0].severity == "info" and "'5'" in info[0].message
    assert "5" in w.layers.names
    last = w.history[-1]
    assert not math.isnan(last.grad_norm[w.layers.names.index("5")])


def test_layer_names_are_data():
    model = nn.Sequential()
    model.add_module("evil\n[red]x\x1b[0m", nn.Linear(4, 4))
    model.add_module("relu", nn.ReLU())
    model.add_module("out", nn.Linear(4, 2))
    nn.init.constant_(model[0].bias, -100.0)       # every unit of the relu dead
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w:
        for _ in range(3):
            model(torch.randn(8, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert w.layers.names[0] == "evil\n[red]x\x1b[0m"       # kept verbatim as data
    assert all("\n" not in e.message and "\x1b" not in e.message for e in w.events)
    summary = w.summary()
    assert "\x1b" not in summary


def test_run_store_receives_steps_layers_and_events(tmp_path):
    from gradhealth.store import load_run

    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run_dir=tmp_path / "run") as w:
        run(model, opt, w, 4)
    r = load_run(tmp_path / "run")
    assert [d["name"] for d in r.layers] == list(w.layers.names)
    assert [s["step"] for s in r.steps] == [0, 1, 2, 3]
    assert r.steps[0]["loss"] == pytest.approx(w.history[0].loss)
    assert r.steps[0]["global_grad_norm"] == pytest.approx(w.history[0].global_grad_norm)
    steps_, vals = r.layer_series("0", "grad_norm")
    assert list(steps_) == [0, 1, 2, 3]
    _, ogn = r.layer_series("2", "out_grad_norm")
    assert len(ogn) >= 1
    assert r.meta["source"] == "gradhealth.watch" and r.finished


def test_unwritable_run_dir_keeps_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with watch(model, opt, run_dir=blocker / "run") as w:
            run(model, opt, w, 3)
    assert w.step == 3 and len(w.history) == 3


def test_schedules():
    assert every(3).first(4) == [0, 3, 6, 9]
    assert log_spaced().first(8) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert log_spaced(until=10).first(10, limit=100) == [0, 1, 2, 4, 8]
    assert (every(50) | steps([3])).first(3) == [0, 3, 50]
    assert default_detail_schedule().first(10) == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200]
    assert never().first(1, limit=100) == []
    with pytest.raises(ParameterError):
        every(0)


def test_copies_and_pickles_of_a_watched_model_carry_no_live_watcher(tmp_path):
    # EMA / best-so-far copies and torch.save(model) are everyday operations while training.
    import copy
    import io

    import gradhealth

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with gradhealth.watch(m, opt, run_dir=tmp_path / "run") as w:
        for _ in range(2):
            loss = m(torch.randn(5, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        ema = copy.deepcopy(m)
        buf = io.BytesIO()
        torch.save(m, buf)
        steps = w.step
        for _ in range(3):  # the copy runs forward without touching the original's watcher
            ema(torch.randn(5, 4))
        assert w.step == steps
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        loaded(torch.randn(5, 4))
    assert len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0
    torch.testing.assert_close(ema(torch.ones(2, 4)), m(torch.ones(2, 4)))
