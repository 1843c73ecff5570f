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
