"""Watcher.state_dict / load_state_dict (issue 13): a resumed run continues its step numbers,
detector baselines and guard counters. Oracle: the same training without the interruption."""

from __future__ import annotations

import copy
import io
import json
import warnings

import pytest
import torch
from torch import nn

from gradhealth.errors import ParameterError
from gradhealth.watch import WatchWarning, watch

STEPS, CUT, SPIKE = 40, 32, 35


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(STEPS)]


def _train(model, opt, w, data, start, stop):
    for s in range(start, stop):
        x, y = data[s]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * (100.0 if s == SPIKE else 1.0)
        loss.backward()
        opt.step()
        w.observe(loss)


def _fresh():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _spikes(w):
    return [(e.step, e.kind) for e in w.events if e.kind == "grad_spike"]


@pytest.mark.parametrize("restore", [True, False])
def test_a_resumed_run_continues_steps_and_detector_baselines(restore):
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        model, opt = _fresh()
        with watch(model, opt, on_nonfinite="skip") as oracle:
            _train(model, opt, oracle, data, 0, STEPS)
        model, opt = _fresh()
        with watch(model, opt, on_nonfinite="skip") as first:
            _train(model, opt, first, data, 0, CUT)
        ckpt = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                "watch": copy.deepcopy(first.state_dict())}
        # the watcher's state survives a checkpoint read with weights_only=True (and JSON)
        buf = io.BytesIO()
        torch.save(ckpt["watch"], buf)
        buf.seek(0)
        ckpt["watch"] = torch.load(buf, weights_only=True)
        assert json.loads(json.dumps(ckpt["watch"])) == ckpt["watch"]
        model2, opt2 = _fresh()
        model2.load_state_dict(ckpt["model"])
        opt2.load_state_dict(ckpt["opt"])
        with watch(model2, opt2, on_nonfinite="skip") as second:
            if restore:
                second.load_state_dict(ckpt["watch"])
            _train(model2, opt2, second, data, CUT, STEPS)
    assert (SPIKE, "grad_spike") in _spikes(oracle)
    if restore:
        assert [s.step for s in second.history] == list(range(CUT, STEPS))
        assert _spikes(second) == [s for s in _spikes(oracle) if s[0] >= CUT]
        # the numbers after the cut are the uninterrupted run's
        want = {s.step: s.global_grad_norm for s in oracle.history}
        assert all(s.global_grad_norm == pytest.approx(want[s.step], rel=1e-6) for s in second.history)
    else:   # without the state: steps restart at 0 and the spike falls in the detectors' warm-up
        assert second.history[0].step == 0 and _spikes(second) == []


def test_load_state_dict_refuses_what_is_not_a_state():
    model, opt = _fresh()
    with watch(model, opt) as w:
        with pytest.raises(ParameterError, match="state"):
            w.load_state_dict({"step": 3})
        with pytest.raises(ParameterError, match="Watcher.state_dict"):
            w.load_state_dict("nope")


def test_a_checkpoint_taken_mid_training_counts_the_step_just_taken():
    """state_dict() called while training (after opt.step(), before the next forward, where a
    checkpoint is taken) ends that step first: the state says CUT steps and its detector windows
    hold step CUT - 1, so the resumed run's history and events are the uninterrupted run's.
    (It said CUT - 1 before, and the resumed run numbered its first step CUT - 1.)"""
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        model, opt = _fresh()
        with watch(model, opt) as oracle:
            _train(model, opt, oracle, data, 0, STEPS)
        model, opt = _fresh()
        with watch(model, opt) as first:
            _train(model, opt, first, data, 0, CUT)
            state = copy.deepcopy(first.state_dict())          # still attached, mid-training
            ckpt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            assert state["step"] == CUT and first.history[-1].step == CUT - 1
        model2, opt2 = _fresh()
        model2.load_state_dict(ckpt[0])
        opt2.load_state_dict(ckpt[1])
        with watch(model2, opt2) as second:
            second.load_state_dict(state)
            _train(model2, opt2, second, data, CUT, STEPS)
    assert [s.step for s in second.history] == list(range(CUT, STEPS))
    assert _spikes(second) == [s for s in _spikes(oracle) if s[0] >= CUT] != []


def test_watch_resume_appends_to_the_same_store(tmp_path):
    """watch(..., run_dir=same, resume=state): the interrupted process ran two steps past its
    checkpoint; the resumed one re-does them into the same store, which then reads as the
    uninterrupted run (oracle: an uninterrupted run's store, step by step)."""
    from gradhealth.store import load_run

    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        model, opt = _fresh()
        with watch(model, opt, run_dir=tmp_path / "oracle") as oracle:
            _train(model, opt, oracle, data, 0, STEPS)
        model, opt = _fresh()
        with watch(model, opt, run_dir=tmp_path / "run") as first:
            _train(model, opt, first, data, 0, CUT)
            state = copy.deepcopy(first.state_dict())
            ckpt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            _train(model, opt, first, data, CUT, CUT + 2)      # past the checkpoint, then "dies"
        model2, opt2 = _fresh()
        model2.load_state_dict(ckpt[0])
        opt2.load_state_dict(ckpt[1])
        with watch(model2, opt2, run_dir=tmp_path / "run", resume=state) as second:
            _train(model2, opt2, second, data, CUT, STEPS)
    got, want = load_run(tmp_path / "run"), load_run(tmp_path / "oracle")
    assert [s["step"] for s in got.steps] == [s["step"] for s in want.steps] == list(range(STEPS))
    for a, b in zip(got.steps, want.steps):
        assert a["global_grad_norm"] == pytest.approx(b["global_grad_norm"], rel=1e-6)
    assert [(e.step, e.kind) for e in got.events] == [(e.step, e.kind) for e in want.events]


def test_watch_resume_refuses_what_is_not_a_state_and_leaves_nothing_attached():
    model, opt = _fresh()
    with pytest.raises(ParameterError, match="state"):
        watch(model, opt, resume={"bogus": 1})
    with watch(model, opt) as w:      # the model is not left watched by the refused attempt
        assert w.active
