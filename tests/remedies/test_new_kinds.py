"""Prescriptions for the issue-9/10 cases: early divergence, overflow, and a vanishing layer's
tiny update ratio (which must never be answered with a larger learning rate)."""

from __future__ import annotations

import inspect

import pytest

import gradhealth
from gradhealth.events import KINDS
from gradhealth.remedies.prescribe import prescribe


def test_divergence_prescribes_warmup_then_lower_lr_then_clip():
    rx = prescribe("divergence", {"loss": 40.0, "initial_loss": 2.3, "lr": 0.1, "grad_norm": 50.0})
    assert "LinearLR" in rx[0].code and "g['lr'] = 0.01" in rx[1].code and "clip_grad_norm_" in rx[2].code
    # the warm-up code binds to the real scheduler signature
    sig = inspect.signature(__import__("torch").optim.lr_scheduler.LinearLR)
    assert {"start_factor", "total_iters"} <= set(sig.parameters)


def test_overflow_never_starts_with_skip_nonfinite():
    rx = prescribe("overflow", {"lr": 1e-3})
    assert rx and "clip_grad_norm_" in rx[0].code
    assert not any("skip_nonfinite" in r.code for r in rx)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_tiny_update_ratio_of_a_saturating_net_is_not_answered_with_a_larger_lr(act):
    rx = prescribe("update_ratio", {"update_ratio": 1e-9, "lr": 0.5, "grad_norm": 1e-12}, activation=act)
    assert rx and not any("g['lr']" in r.code for r in rx)
    assert "cannot help" in rx[0].reason
    if act == "sigmoid":
        assert "replace_activation_" in rx[0].code


def test_tiny_update_ratio_of_a_healthy_relu_layer_may_still_raise_the_lr():
    rx = prescribe("update_ratio", {"update_ratio": 1e-6, "lr": 0.01, "grad_norm": 0.3}, activation="relu")
    assert any("g['lr']" in r.code for r in rx)


def test_every_kind_has_a_rule():
    for k in KINDS:
        prescribe(k, {})
    assert {"divergence", "overflow"} <= set(KINDS)
    assert gradhealth.remedies.clip_grad_norm_ is not None
