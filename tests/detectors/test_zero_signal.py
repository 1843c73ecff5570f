"""The ``zero`` signal of exploding_vanishing: input-side weight layers whose gradient is exactly
0 while a later one gets a gradient (issue 10: a functional-ReLU model with dead units gave no
watch event at all, while probe said vanishing, because no unit statistic exists without an
activation module and a trend cannot be fitted through zeros).

Oracles: a slow per-element loop for the prefix; on a real model, probe's verdict and remedy.
"""

from __future__ import annotations

import math

import numpy as np
from broken_models import FunctionalMLP
from hypothesis import given, settings
from hypothesis import strategies as st

from gradhealth.detectors import LayerTable, StepStats, run_detectors
from gradhealth.detectors.depth import _zero_prefix, exploding_vanishing

_T = LayerTable(tuple(f"l{i}" for i in range(5)), ("Linear",) * 5, ("weight",) * 5)


def _slow_prefix(values, order):
    """Walk the layers in forward order, skipping unmeasured (NaN) ones."""
    zeros = 0
    for i in order:
        v = values[i]
        if math.isnan(v):
            continue
        if v == 0:
            zeros += 1
            continue
        return zeros if math.isfinite(v) and v > 0 else None
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 1.5, math.nan, math.inf, 1e-30, -1.0]), min_size=0, max_size=7),
       st.randoms())
def test_prefix_matches_a_slow_loop(values, rnd):
    order = list(range(len(values)))
    rnd.shuffle(order)
    got = _zero_prefix(np.array(values, dtype=float), np.array(order, dtype=np.int64))
    assert got == _slow_prefix(values, order)


def _zero_events(detector, seq):
    return [e for e in run_detectors(detector, seq) if e.evidence.get("signal") == "zero"]


def _seq(rows):
    return [StepStats.empty(s, _T, grad_norm=np.array(r, dtype=float), lr=0.1) for s, r in enumerate(rows)]


def test_fires_once_at_patience_and_names_the_first_dead_layer():
    rows = [[0, 0, 0.5, 0.2, 0.1]] * 6
    ev = _zero_events(exploding_vanishing(zero_patience=3), _seq(rows))
    assert [(e.step, e.kind, e.layer, e.since) for e in ev] == [(2, "vanishing", "l0", 0)]
    assert ev[0].evidence["zero_layers"] == ["l0", "l1"]


def test_unmeasured_layers_and_transient_zeros_do_not_fire():
    frozen = [[math.nan, math.nan, 0.5, 0.2, 0.1]] * 6            # frozen backbone: no gradient at all
    rezero = [[0, 0, 0.5, 0.2, 0.1]] + [[0.3, 0.2, 0.5, 0.2, 0.1]] * 5   # zero-init branch, step 0 only
    flicker = [[0, 0.1, 0.5, 0.2, 0.1], [0.1] * 5] * 3               # never 3 in a row
    all_zero = [[0.0] * 5] * 6                                       # nothing to compare with
    for rows in (frozen, rezero, flicker, all_zero):
        assert not _zero_events(exploding_vanishing(zero_patience=3), _seq(rows)), rows


def test_relu_modules_leave_it_to_dead_units():
    """With ReLU modules the units are measured (dead_units): no second event for the zeros."""
    t = LayerTable(("l0", "act", "l1", "l2"), ("Linear", "ReLU", "Linear", "Linear"),
                   ("weight", "activation", "weight", "weight"), families=("", "relu", "", ""),
                   activations=("", "relu", "", ""))
    seq = [StepStats.empty(s, t, grad_norm=np.array([0.0, math.nan, 0.5, 0.1]), lr=0.1) for s in range(6)]
    assert not _zero_events(exploding_vanishing(), seq)
    plain = [x.replace(layers=LayerTable(t.names, t.types, t.roles)) for x in seq]   # the same, functional
    assert [e.layer for e in _zero_events(exploding_vanishing(), plain)] == ["l0"]


def test_a_functional_dead_relu_mlp_is_vanishing_for_watch_as_for_probe():
    """Watch had no event for this model; now its event and remedy are probe's."""
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "watch"))
    import test_watch_probe_agreement as agree

    torch.manual_seed(0)
    model = FunctionalMLP(6, 64, torch.relu)
    for layer in [*model.layers, model.out]:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.constant_(layer.bias, -3.0)
    x, y, loss_fn = agree._digits()
    rx, events = agree._probe_and_watch(model, x, y, loss_fn)
    assert rx.verdict == "vanishing"
    ev = next(e for e in events if e.kind == "vanishing")
    assert ev.layer == "layers.0" and ev.evidence["signal"] == "zero"
    assert agree._calls(ev.remedy) == agree._calls(rx.prescriptions[0].code)
