"""Clip detection with sampled fingerprints (see gradhealth.watch.instruments): once the clip
coefficients are uniform for a few logged steps the watcher fingerprints a subset of the
gradients and applies their common coefficient to the others; any non-uniform coefficient
switches back to full fingerprints.

Oracle: the per-layer and global gradient norms computed by hand *before* the clip, from the
gradients themselves, compared with what the watcher reports as the pre-clip norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth.remedies import clip_by_layer_norm_
from gradhealth.watch import instruments, never, watch
from gradhealth.watch._record import StepRecord, decode_clip
from gradhealth.watch.instruments import RECHECK_EVERY, SAMPLE_AFTER, SAMPLE_SIZE, TRUST_AFTER

DEPTH = 14   # 14 Linear layers: 28 gradient tensors, more than SAMPLE_SIZE


def deep(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for _ in range(DEPTH):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    return nn.Sequential(*layers)


def linear_norms(model) -> np.ndarray:
    """The hand-computed per-layer (weight and bias together) gradient norms, in layer order
    of the Linear layers."""
    return np.array([math.sqrt(float(m.weight.grad.double().square().sum() + m.bias.grad.double().square().sum()))
                     for m in model if isinstance(m, nn.Linear)])


def reported_linear(w, s) -> np.ndarray:
    idx = [i for i, t in enumerate(w.layers.types) if t == "Linear"]
    return np.asarray(s.grad_norm)[idx]


def norm_clip_from(start: int, max_norm: float = 0.05):
    """A ``clip_at`` for :func:`train`: ``clip_grad_norm_(max_norm)`` from step ``start`` on."""
    def clip(s, m):
        if s >= start:
            torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
    return clip


def train(model, steps, clip_at, fingerprinted: list | None = None):
    """``clip_at(step, model)`` clips in place; returns the watcher, the hand-computed pre-clip
    norms per step, and per step whether its fingerprints were a sampled subset (and, into
    ``fingerprinted``, whether the step was fingerprinted at all and its ``clip_exact``)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    want, sampled = [], []
    with watch(model, opt, every=1, detail_every=never()) as w:
        for s in range(steps):
            x = torch.randn(16, 8, generator=g) * 3
            model(x).pow(2).sum().backward()
            want.append(linear_norms(model))
            clip_at(s, model)
            opt.step()
            opt.zero_grad()
            rec = w._inst._ver_rec   # this step's record
            sampled.append(rec.fp_sampled)
            if fingerprinted is not None:
                fingerprinted.append((rec.fp_end is not None, rec.clip_exact))
    return w, want, sampled


def test_global_clip_while_sampling_matches_the_hand_computed_pre_clip_norms():
    model = deep()
    w, want, sampled = train(model, 12, lambda s, m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05))
    hist = list(w.history)
    assert len(hist) == 12
    assert not any(sampled[:SAMPLE_AFTER]) and all(sampled[SAMPLE_AFTER:])   # the subset really was used
    for s, h in zip(range(12), hist):
        np.testing.assert_allclose(reported_linear(w, h), want[s], rtol=1e-5)
        assert h.global_grad_norm == pytest.approx(float(np.sqrt(np.sum(want[s] ** 2))), rel=1e-5)
        assert h.global_grad_norm_clipped == pytest.approx(0.05, rel=1e-4)


def test_per_layer_clip_starting_late_is_caught_within_two_logged_steps():
    model = deep()
    start = SAMPLE_AFTER + 4

    def clip(s, m):
        if s < start:
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1e9)   # never clips: coefficient 1
        else:   # one threshold for every layer: the larger layers are clipped, the others not
            clip_by_layer_norm_(m, 0.6 * float(linear_norms(m).max()))

    w, want, sampled = train(model, start + 6, clip)
    hist = list(w.history)
    assert all(sampled[SAMPLE_AFTER:start + 1])    # sampling when the per-layer clip began
    assert not any(sampled[start + 2:])            # full fingerprints again two logged steps later
    assert any(want[start] > 0.6 * want[start].max() * (1 + 1e-3) - 1e-12)   # some layers clipped
    assert any(want[start] < 0.6 * want[start].max())                        # and some not
    for s in range(start + 2, start + 6):          # exact again in full mode
        np.testing.assert_allclose(reported_linear(w, hist[s]), want[s], rtol=1e-5)
    for s in (start, start + 1):                   # meanwhile a missed clip reads low, never high
        assert np.all(reported_linear(w, hist[s]) <= want[s] * (1 + 1e-5))
    for s in range(start):
        np.testing.assert_allclose(reported_linear(w, hist[s]), want[s], rtol=1e-5)


def test_value_clipping_starting_late_switches_back_to_full_fingerprints():
    model = deep()
    start = SAMPLE_AFTER + 3

    def clip(s, m):
        if s >= start:
            torch.nn.utils.clip_grad_value_(m.parameters(), 1e-3)

    fp: list = []
    w, want, sampled = train(model, start + 4, clip, fp)
    # untouched gradients: the version counters stand in for the fingerprints after TRUST_AFTER
    # steps; the first value clip is seen by them (the step reads as unclipped, inexact), and
    # fingerprints are back from the next step on
    assert [f for f, _ in fp] == [True] * TRUST_AFTER + [False] * (start + 1 - TRUST_AFTER) + [True] * 3
    assert [e for _, e in fp] == [True] * start + [False] * 4   # value clipping: never one coefficient
    assert sampled[start + 1] and not any(sampled[start + 2:])  # not one coefficient: full fingerprints
    hist = list(w.history)
    for s in range(start):
        np.testing.assert_allclose(reported_linear(w, hist[s]), want[s], rtol=1e-5)
    assert np.all(reported_linear(w, hist[start]) <= want[start] * (1 + 1e-5))   # reads low, never high


def test_a_late_norm_clip_after_the_version_counters_took_over_is_exact_from_the_next_step():
    model = deep()
    start = TRUST_AFTER + 2
    fp: list = []
    clip = norm_clip_from(start)
    w, want, _ = train(model, start + 5, clip, fp)
    assert [f for f, _ in fp] == [True] * TRUST_AFTER + [False] * (start + 1 - TRUST_AFTER) + [True] * 4
    hist = list(w.history)
    for s in [*range(start), *range(start + 1, start + 5)]:   # exact: unclipped, then fingerprinted
        np.testing.assert_allclose(reported_linear(w, hist[s]), want[s], rtol=1e-5)
        assert hist[s].global_grad_norm == pytest.approx(float(np.sqrt(np.sum(want[s] ** 2))), rel=1e-5)
    assert math.isnan(hist[start - 1].global_grad_norm_clipped)          # no clip seen before start
    assert hist[start + 1].global_grad_norm_clipped == pytest.approx(0.05, rel=1e-4)
    assert fp[start] == (False, False)   # the first clipped step: no fingerprint, marked inexact
    np.testing.assert_allclose(np.sqrt(np.sum(reported_linear(w, hist[start]) ** 2)), 0.05, rtol=1e-4)


def test_writes_through_data_that_the_version_counters_miss_keep_the_fingerprints_on():
    """``p.grad.data.mul_(c)`` (``c`` not a power of two, which reads as AMP unscaling) moves
    no version counter: the fingerprints of the first steps see it, and the watcher
    fingerprints for the rest of the run (exact pre-clip norms)."""
    model = deep()
    fp: list = []

    def clip(s, m):
        for p in m.parameters():
            p.grad.data.mul_(0.3)

    w, want, _ = train(model, TRUST_AFTER + RECHECK_EVERY + 3, clip, fp)
    assert all(f for f, _ in fp)
    for s, h in enumerate(w.history):
        np.testing.assert_allclose(reported_linear(w, h), want[s], rtol=1e-5)
        np.testing.assert_allclose(h.global_grad_norm_clipped, 0.3 * np.sqrt(np.sum(want[s] ** 2)), rtol=1e-5)


def test_a_late_write_through_data_is_caught_by_the_periodic_fingerprints():
    model = deep()
    start = TRUST_AFTER + 2
    fp: list = []

    def clip(s, m):
        if s >= start:
            for p in m.parameters():
                p.grad.data.mul_(0.3)

    steps = TRUST_AFTER + RECHECK_EVERY + 6
    w, want, _ = train(model, steps, clip, fp)
    first = next(s for s in range(start, steps) if fp[s][0])   # the periodic recheck
    assert first <= TRUST_AFTER + RECHECK_EVERY
    assert all(f for f, _ in fp[first:])                        # fingerprints from then on
    hist = list(w.history)
    for s in range(first, steps):
        np.testing.assert_allclose(reported_linear(w, hist[s]), want[s], rtol=1e-5)
    for s in range(start, first):                              # meanwhile: low, never high
        assert np.all(reported_linear(w, hist[s]) <= want[s] * (1 + 1e-5))


def _samples(end, cur):
    return np.array(end + cur, dtype=np.float32)


def test_decode_clip_gives_the_common_coefficient_to_the_unsampled_positions():
    rec = StepRecord(0, False)
    # positions 0 and 1 sampled, both clipped by 0.375; 2 and 3 not sampled
    after = [0.375, 0.75, 1.125, 1.5, 0.75, 0.75, 0.75, 0.75]
    decode_clip(rec, [0, 1], _samples([1, 2, 3, 4, 2, 2, 2, 2], after), None, rest=[0, 1, 2, 3])
    assert rec.clip == {0: 0.375, 1: 0.375, 2: 0.375, 3: 0.375}
    assert rec.clip_uniform and rec.clip_exact and rec.clipped


def test_decode_clip_non_uniform_subset_leaves_the_rest_unknown_and_inexact():
    rec = StepRecord(0, False)
    decode_clip(rec, [0, 1], _samples([1, 2, 3, 4, 2, 2, 2, 2], [0.375, 0.75, 1.125, 1.5, 2, 2, 2, 2]), None,
                rest=[0, 1, 2, 3])
    assert rec.clip == {0: 0.375, 1: 1.0}          # the unsampled 2 and 3 get no coefficient
    assert rec.clip_uniform is False and not rec.clip_exact


def test_decode_clip_full_fingerprints_unchanged_and_a_second_optimizer_is_not_uniform():
    rec = StepRecord(0, False)
    decode_clip(rec, [0], _samples([1, 2, 3, 4], [0.375, 0.75, 1.125, 1.5]), None)
    assert rec.clip == {0: 0.375} and rec.clip_uniform is True
    decode_clip(rec, [1], _samples([1, 2, 3, 4], [0.375, 0.75, 1.125, 1.5]), None)
    assert rec.clip == {0: 0.375, 1: 0.375} and rec.clip_uniform is False


def test_small_models_are_always_fingerprinted_in_full():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(SAMPLE_SIZE // 2)])   # SAMPLE_SIZE tensors
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, opt, every=1, detail_every=never()) as w:
        for _ in range(SAMPLE_AFTER + 3):
            model(torch.randn(4, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
        rec = w._inst._clip_rec
        assert rec is not None and not rec.fp_sampled and len(rec.fp_end[0]) == SAMPLE_SIZE


def test_a_model_of_many_tensors_keeps_the_sampled_fingerprints(monkeypatch):
    """Beyond VERSIONS_UP_TO gradient tensors no counters are taken (a list of them would cost
    more than the sampled fingerprints): every logged step is fingerprinted, and a late clip is
    exact at once. Oracle: the hand-computed pre-clip norms."""
    monkeypatch.setattr(instruments, "VERSIONS_UP_TO", 2 * DEPTH - 1)   # the model has 2 * DEPTH
    model = deep()
    start = TRUST_AFTER + 2
    fp: list = []
    clip = norm_clip_from(start)
    w, want, sampled = train(model, start + 3, clip, fp)
    assert all(f for f, _ in fp) and all(e for _, e in fp)
    assert w._inst._ver_rec.versions is None
    assert all(sampled[SAMPLE_AFTER:])
    for s, h in enumerate(w.history):
        np.testing.assert_allclose(reported_linear(w, h), want[s], rtol=1e-5)


@pytest.mark.parametrize("clip", ["global", "embedding only"])
def test_a_gradient_zero_at_its_samples_still_gives_its_pre_clip_norm(clip):
    """An embedding whose batches touch a few rows has a gradient that is zero at the four
    fixed sample places (rows 0, 33, 66, 99): no clip coefficient can be read from zeros, and
    the watcher reported the clipped norm as the pre-clip one (100-290x low under a global
    clip). Now a blind tensor takes the common coefficient of a uniform clip at once, and is
    sampled at its largest entry from the next step on (a clip of that tensor alone is then
    exact from the second step). Oracle: the norms of the gradients before the clip."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    want_emb, want_all = [], []
    with watch(m, opt, detail_every=never()) as w:
        for _ in range(6):
            idx = torch.randint(5, 10, (4, 3), generator=g)
            m(idx).pow(2).mean().backward()
            want_emb.append(float(m[0].weight.grad.double().norm()))
            want_all.append(math.sqrt(sum(float(p.grad.double().square().sum()) for p in m.parameters())))
            torch.nn.utils.clip_grad_norm_(m.parameters() if clip == "global" else m[0].parameters(), 0.01)
            opt.step()
            opt.zero_grad()
    first = 0 if clip == "global" else 1
    emb = w.layers.names.index("0")
    for s in list(w.history)[first:]:
        assert s.grad_norm[emb] == pytest.approx(want_emb[s.step], rel=1e-4)
        assert s.global_grad_norm == pytest.approx(want_all[s.step], rel=1e-4)
        assert s.global_grad_norm_clipped < s.global_grad_norm
