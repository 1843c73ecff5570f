"""API misuse raises a GradHealthError (a ParameterError naming the parameter), never a raw
TypeError / RuntimeError / AttributeError from deep inside (issue 10)."""

import math

import pytest
import torch
import torch.nn as nn

import gradhealth
from gradhealth.errors import GradHealthError, ParameterError
from gradhealth.remedies import lsuv_
from gradhealth.remedies.clip import clip_by_layer_norm_, clip_grad_norm_
from gradhealth.store import load_run
from gradhealth.theory.chain import deep_linear, power_table, scalar_chain, weight_claim
from gradhealth.watch.config import WatchConfig


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _raises(param, fn, *args, **kwargs):
    with pytest.raises(ParameterError) as exc:
        fn(*args, **kwargs)
    assert exc.value.param == param, str(exc.value)
    assert isinstance(exc.value, GradHealthError)
    return exc.value


def test_lsuv_without_a_batch():
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    _raises("inputs", lsuv_, model, None)
    # nothing was re-initialised: the check comes before the orthogonal start
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lsuv_with_a_batch_of_the_wrong_shape():
    model = _mlp()
    err = _raises("inputs", lsuv_, model, torch.randn(3, 5))
    assert "(3, 5)" in str(err) and "mat1 and mat2" in str(err)
    assert model.training  # the mode is restored


def test_lsuv_with_a_good_batch_still_works():
    model = _mlp()
    summary = lsuv_(model, torch.randn(64, 4))
    assert [c.layer for c in summary.changed] == ["0", "2"]


@pytest.mark.parametrize("params", ["params", b"params", 3, [torch.zeros(2), "w"]])
@pytest.mark.parametrize("fn", [clip_grad_norm_, clip_by_layer_norm_])
def test_clip_with_something_that_is_not_parameters(fn, params):
    _raises("parameters" if fn is clip_grad_norm_ else "model", fn, params, 1.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "two"])
def test_clip_norm_type_rule_says_inf_is_allowed(bad):
    model = _mlp()
    err = _raises("norm_type", clip_grad_norm_, model.parameters(), 1.0, norm_type=bad)
    assert "(0.0, inf)" not in str(err)
    assert "inf" in err.rule and "> 0" in err.rule
    # what the rule says is accepted, is accepted
    model(torch.randn(3, 4)).sum().backward()
    assert math.isfinite(float(clip_grad_norm_(model.parameters(), 1.0, norm_type=float("inf"))))
    assert math.isfinite(float(clip_grad_norm_(model.parameters(), 1.0, norm_type="inf")))


@pytest.mark.parametrize("bad", [None, 3, ["runs/a"]])
def test_load_run_of_something_that_is_not_a_path(bad):
    _raises("run_dir", load_run, bad)


@pytest.mark.parametrize("bad", [123, 1.5, ["runs"], object()])
def test_watch_run_dir_of_the_wrong_type(bad):
    _raises("run_dir", WatchConfig, run_dir=bad)
    _raises("run_dir", gradhealth.watch, _mlp(), run_dir=bad)


@pytest.mark.parametrize("fn,kwargs,param", [
    (scalar_chain, {"depth": 10 ** 9}, "depth"),
    (scalar_chain, {"depth": 3, "points": 10 ** 9}, "points"),
    (scalar_chain, {"depth": 10_001}, "depth"),
    (scalar_chain, {"depth": 10_000, "points": 1001}, "depth"),
    (scalar_chain, {"depth": 10_000, "x": [0.0] * 1001}, "depth"),
    (scalar_chain, {"weight": [1.0] * 10_001}, "depth"),
    (power_table, {"weight": 0.5, "depth": 10 ** 8}, "depth"),
    (deep_linear, {"depth": 10, "width": 100_000}, "width"),
    (deep_linear, {"depth": 10 ** 8, "width": 2}, "depth"),
    (deep_linear, {"depth": 1000, "width": 1000, "init": "gaussian", "trials": 100}, "depth"),
    (weight_claim, {"depth": 10, "width": 100_000}, "width"),
    (weight_claim, {"depth": 10 ** 9}, "depth"),
])
def test_theory_sizes_are_capped_with_a_fix_that_fits(fn, kwargs, param):
    err = _raises(param, fn, **kwargs)
    assert err.fix and "or larger" not in err.fix, str(err)
