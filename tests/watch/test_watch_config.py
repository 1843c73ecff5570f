"""WatchConfig: the options of watch(), their defaults and rules in one place."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.errors import ParameterError
from gradhealth.watch import Watcher, watch
from gradhealth.watch.config import ON_NONFINITE_CHOICES, OnNonFinite, RollbackStorage, WatchConfig
from gradhealth.watch.schedule import Schedule


def test_watch_signature_defaults_are_the_configs():
    """watch() spells its defaults in its signature (for help() and type checkers); they
    must be WatchConfig's, option for option (``resume`` is not a configuration: the state
    of the run it continues)."""
    sig = inspect.signature(watch).parameters
    fields = {f.name: f for f in dataclasses.fields(WatchConfig)}
    options = [n for n in sig if n not in ("model", "optimizer", "resume")]
    assert sig["resume"].default is None
    assert options == list(fields)
    for name in options:
        assert sig[name].default == fields[name].default, name


def test_string_options_are_literals_in_the_public_signature():
    hints = typing.get_type_hints(watch)
    assert hints["on_nonfinite"] is OnNonFinite and hints["rollback_storage"] is RollbackStorage
    assert ON_NONFINITE_CHOICES == ("warn", "skip", "rollback", "raise")


def test_config_is_frozen_and_normalised():
    c = WatchConfig(every=5, detectors=[gradhealth.detectors.nonfinite()], rollback_lr_factor=1)
    assert isinstance(c.every, Schedule) and isinstance(c.detail_every, Schedule)
    assert isinstance(c.detectors, gradhealth.detectors.Detector)
    assert c.rollback_lr_factor == 1.0 and isinstance(c.rollback_lr_factor, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.every = 1  # type: ignore[misc]


@pytest.mark.parametrize("kw, name", [
    ({"on_nonfinite": "skp"}, "on_nonfinite"), ({"every": 0}, "every"), ({"detail_every": True}, "detail_every"),
    ({"max_consecutive_skips": -1}, "max_consecutive_skips"), ({"rollback_every": 0}, "rollback_every"),
    ({"rollback_lr_factor": 0.0}, "rollback_lr_factor"), ({"rollback_storage": "tape"}, "rollback_storage"),
    ({"rollback_storage": "disk"}, "rollback_storage"), ({"history_size": 0}, "history_size"),
    ({"scaler": object()}, "scaler"), ({"detectors": [1]}, "detectors"),
    # yes/no options take a bool, never a truthy string ("no" used to turn replay on)
    ({"replay": "no"}, "replay"), ({"replay": "false"}, "replay"), ({"update_ratio": "off"}, "update_ratio"),
    ({"forward_stats": None}, "forward_stats"), ({"forward_stats": 0}, "forward_stats"),
    # meta is the store's metadata: a dict of named values (a list raised a raw TypeError)
    ({"meta": [1, 2]}, "meta"), ({"meta": "hello"}, "meta"), ({"meta": 5}, "meta"), ({"meta": {1: 2}}, "meta"),
])
def test_each_rule_names_its_option(kw, name):
    with pytest.raises(ParameterError) as exc:
        WatchConfig(**kw)
    assert exc.value.param == name and exc.value.owner == "gradhealth.watch" and exc.value.fix


def test_watcher_takes_a_config_or_options_not_both():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = Watcher(model, opt, WatchConfig(every=2))
    assert w.config.every(2) and not w.config.every(1)
    w.remove()
    with pytest.raises(ParameterError, match="not both"):
        Watcher(model, opt, WatchConfig(), every=2)


def test_model_is_checked_before_the_options():
    with pytest.raises(ParameterError) as exc:
        watch(object(), every=0)  # type: ignore[arg-type]
    assert exc.value.param == "model"


def test_a_callable_schedule_is_asked_once_per_step():
    """The hooks ask "is this step logged / a detail step?" several times a step; the user's
    schedules are called once per step and schedule (they may be costly or count calls).
    Oracle: the steps the loop ran, and what the schedules answered."""
    asked: dict[str, list[int]] = {"every": [], "detail": []}

    def every(step):
        asked["every"].append(step)
        return step % 3 == 0

    def detail(step):
        asked["detail"].append(step)
        return step == 4

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with watch(m, opt, every=every, detail_every=detail) as w:
        for _ in range(8):
            loss = m(torch.randn(5, 4)).pow(2).mean()
            loss.backward()
            w.observe(loss)
            opt.step()
            opt.zero_grad()
    assert asked["detail"] == list(range(8))
    assert asked["every"] == [s for s in range(8) if s != 4]   # (a detail step is logged anyway)
    assert [s.step for s in w.history] == [0, 3, 4, 6]
    assert [s.step for s in w.history if s.full] == [4]


def test_numpy_integers_are_integers_for_the_schedules_too():
    """every / detail_every took only a Python int, while history_size and the other integer
    options took np.int64 as well. Oracle: the schedule of the same Python int."""
    import numpy as np

    c = WatchConfig(every=np.int64(5), detail_every=np.int32(7), history_size=np.int64(3))
    assert [s for s in range(30) if c.every(s)] == [s for s in range(30) if s % 5 == 0]
    assert [s for s in range(30) if c.detail_every(s)] == [s for s in range(30) if s % 7 == 0]
    with pytest.raises(ParameterError) as exc:
        WatchConfig(every=np.int64(0))
    assert exc.value.param == "every"
    assert WatchConfig(replay=np.bool_(False)).replay is False


def test_an_empty_optimizer_list_is_refused():
    """optimizer=[] was taken and then nothing was ever measured (not even a NaN step), while
    optimizer=None adopts the optimizer: an empty list is an error that says so."""
    model = nn.Linear(2, 2)
    for empty in ([], ()):
        with pytest.raises(ParameterError) as exc:
            watch(model, empty)
        assert exc.value.param == "optimizer" and "None" in exc.value.fix
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("bad, rule", [(10 ** 400, "float range"), ("1.0", "scalar"), (torch.ones(2), "scalar")],
                         ids=["huge-int", "str", "two-elements"])
def test_observe_refuses_what_is_not_a_loss(bad, rule):
    """observe(10**400) raised a raw OverflowError from float()."""
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w:
        with pytest.raises(ParameterError) as exc:
            w.observe(bad)
    assert exc.value.param == "loss" and rule in str(exc.value)


def test_a_sparse_scalar_loss_is_observed_as_its_value():
    """A 0-dim sparse loss was taken, then a hook failed and the whole step's statistics were
    lost from the history. Oracle: the dense value, and every step logged."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with watch(model, opt) as w:
        for _ in range(3):
            loss = model(torch.randn(4, 2)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen.append(float(loss.detach()))
            w.observe(loss.detach().to_sparse())
    assert [s.step for s in w.history] == [0, 1, 2]
    assert [s.loss for s in w.history] == pytest.approx(seen, rel=1e-6)
    assert not [e for e in w.events if e.kind == "internal"]
