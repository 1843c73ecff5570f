"""Spike attribution (issue 9): which layer's gradient norm rose first, and how many steps
before the spike. Oracle: the onset is written into the synthetic run by construction and
recomputed by a plain loop over the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradhealth.detectors as D
from gradhealth.detectors import LayerTable, StepStats
from gradhealth.detectors.spikes import RISE_FACTOR, first_riser

NAMES = ("emb", "block0", "block1", "block2", "head")


def _run(riser: int, onset: int, spike: int, steps: int = 50, seed: int = 0):
    """Steady per-layer norms with 5 % noise; layer ``riser`` grows 1.3x per step from
    ``onset`` up to 4x (too little to move the global norm much); at ``spike`` every layer
    jumps 30x and the loss 50 (one step: the global spike)."""
    rng = np.random.default_rng(seed)
    t = LayerTable(NAMES, ("Linear",) * 5, ("weight",) * 5)
    base = np.array([0.5, 1.0, 0.8, 1.2, 0.3])
    out = []
    for s in range(steps):
        g = base * np.exp(0.05 * rng.standard_normal(5))
        if s >= onset:
            g[riser] *= min(1.3 ** (s - onset + 1), 4.0)
        if s == spike:
            g = g * 30.0
        out.append(StepStats.empty(s, t, grad_norm=g, global_grad_norm=float(np.sqrt((g ** 2).sum())),
                                   loss=1.0 + (50.0 if s == spike else 0.0) + 0.01 * rng.standard_normal()))
    return out


def _onset_by_loop(stats, layer, spike, window=32):
    """The first step of the unbroken run, ending at ``spike``, where ``layer``'s norm is at
    least RISE_FACTOR x the median of the older half of the window (a plain loop)."""
    hist = [s for s in stats if s.step <= spike][-window:]
    older = [math.log10(s.grad_norm[layer]) for s in hist[: len(hist) // 2]]
    base = float(np.median(older))
    onset = None
    for s in reversed(hist):
        if math.log10(s.grad_norm[layer]) >= base + math.log10(RISE_FACTOR):
            onset = s.step
        else:
            break
    return onset


@pytest.mark.parametrize("riser,onset", [(2, 36), (0, 38), (4, 33)])
def test_a_gradient_spike_names_the_layer_that_rose_first_and_the_lead(riser, onset):
    stats = _run(riser, onset, spike=42)
    ev = [e for e in D.run_detectors(D.grad_spikes(), stats) if e.kind == "grad_spike"]
    assert len(ev) == 1 and ev[0].step == 42
    want = _onset_by_loop(stats, riser, 42)
    assert want is not None and onset <= want <= onset + 3     # 1.3x per step crosses 2x within 3
    assert ev[0].evidence["rose_first"] == NAMES[riser]
    assert ev[0].evidence["rose_first_steps_before"] == 42 - want
    assert f"{NAMES[riser]!r} rose first ({42 - want} steps before" in ev[0].message


def test_a_loss_spike_names_it_too():
    stats = _run(3, 35, spike=42)
    ev = [e for e in D.run_detectors(D.loss_spikes(), stats) if e.kind == "loss_spike"]
    assert len(ev) == 1 and ev[0].layer == "block2"
    assert ev[0].evidence["rose_first_steps_before"] == 42 - _onset_by_loop(stats, 3, 42)


def test_no_riser_when_every_layer_jumps_at_once():
    # all layers jump at the spike step itself: the lead is 0 for all, the largest rise wins
    stats = _run(1, 10 ** 6, spike=42)
    hist = tuple((s.step, np.log10(s.grad_norm)) for s in stats[11:43])   # steps 11..42
    name, lead, factor = first_riser(hist, NAMES)
    assert lead == 0 and factor == pytest.approx(30.0, rel=0.3)
    # and nothing is named when nothing rose
    quiet = tuple((s.step, np.log10(s.grad_norm)) for s in stats[:32])
    assert first_riser(quiet, NAMES) == (None, None, None)
