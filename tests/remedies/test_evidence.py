"""Evidence: for each canonical broken network, the prescribed remedy makes the backward signal
healthy and a short training run reach a clearly lower loss.

The chain is tested end to end: probe the broken model, take its rank-1 prescription, run
that code on the model, probe again. The backward signal is also checked with an independent
measure (plain autograd hooks, :func:`backward_profile`), so the evidence does not rest on the
probe's own thresholds.
"""

import math

import pytest
import torch

import gradhealth
from gradhealth.gallery._cases import CASES, backward_profile, delay_task, digits, train

try:  # the probe pillar; the independent measure below stands without it
    from gradhealth.probe import probe
except ImportError:  # pragma: no cover
    probe = None

EXPECTED = {"tanh_chaotic": "exploding", "sigmoid_default": "vanishing", "linear_1p5": "exploding",
            "rnn_radius3": "exploding"}


def _inputs(case):
    return delay_task(64)[0] if case.recurrent else digits()[0][:256]


def _spread(profile):
    """How much the backward signal changes between the best- and worst-served layer (step)."""
    return max(profile) / min(profile)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", CASES, ids=[c.slug for c in CASES])
def test_remedy_makes_the_backward_signal_healthy_and_training_better(case):
    x = _inputs(case)
    broken = case.build(0)
    before = backward_profile(broken, x, case.recurrent)
    # broken: the signal changes by > 100x across depth (time), in the expected direction
    assert _spread(before) > 100
    first_over_last = before[0] / before[-1]
    assert first_over_last > 100 if EXPECTED[case.slug] == "exploding" else first_over_last < 1 / 100

    fixed = case.build(0)
    if probe is not None:
        r = probe(fixed, x[:64])
        assert r.verdict == EXPECTED[case.slug]
        top = r.prescriptions[0].code
        assert top == case.remedy  # the diagnosis prescribes exactly this remedy...
        exec(top, {"gradhealth": gradhealth, "model": fixed})  # noqa: S102 - ...and it runs as written
        assert probe(fixed, x[:64]).verdict == "healthy"
    else:  # pragma: no cover
        case.apply(fixed)
    after = backward_profile(fixed, x, case.recurrent)
    assert _spread(after) < 10, after

    loss_broken = train(case.build(0), case.task, case.optimizer, case.lr, case.steps, every=case.steps)[-1]
    loss_fixed = train(fixed, case.task, case.optimizer, case.lr, case.steps, every=case.steps)[-1]
    assert math.isfinite(loss_fixed)
    assert loss_fixed < 0.5 * loss_broken, (loss_fixed, loss_broken)
