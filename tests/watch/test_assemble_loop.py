"""The vectorised per-layer gradient assembly against a plain loop over the positions.

Oracle: for each parameter position in the record's order, its pre-clip norm (applied norm
over the clip coefficient, when that is positive and finite) squared and added to its
layer's running sum, its NaN/Inf count added to its layer's; the global sums in the same
order. Sums in one order are the same floating-point numbers, so the comparison is exact."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gradhealth.watch._assemble import _gradients
from gradhealth.watch._record import StepRecord

_vals = st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, math.inf, math.nan]))
_coef = st.one_of(st.floats(1e-6, 2.0), st.sampled_from([0.0, -1.0, math.inf, math.nan]))


def _loop(rec, layer_of, L):
    sq = [0.0] * L
    has = [False] * L
    cnt = [0] * L
    g_pre = g_post = 0.0
    for p, v in rec.post.items():
        c = rec.clip.get(p, 1.0) if rec.clip else 1.0
        pre = v / c if (c > 0 and math.isfinite(c)) else v
        g_pre += pre * pre
        g_post += v * v
        li = layer_of[p]
        if li >= 0:
            sq[li] += pre * pre
            has[li] = True
            cnt[li] += rec.nf.get(p, 0)
    norms = [math.sqrt(s) if h else math.nan for s, h in zip(sq, has)]
    return norms, [c if h else -1 for c, h in zip(cnt, has)], g_pre, g_post


@st.composite
def _records(draw):
    L = draw(st.integers(1, 6))
    P = draw(st.integers(0, 12))
    layer_of = tuple(draw(st.lists(st.integers(-1, L - 1), min_size=P, max_size=P)))
    positions = draw(st.permutations(range(P)))[:draw(st.integers(0, P))]
    rec = StepRecord(step=0, detail=False)
    rec.post = {p: draw(_vals) for p in positions}
    if draw(st.booleans()):
        rec.clip = {p: draw(_coef) for p in positions if draw(st.booleans())}
    rec.nf = {p: draw(st.sampled_from([0, 0, 0, 1, 7])) for p in positions}
    return rec, layer_of, L


def _same(a, b):
    return all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)) and len(a) == len(b)


@settings(max_examples=300, deadline=None)
@given(_records(), st.booleans())
def test_gradients_equal_a_loop_over_positions(case, as_list):
    rec, layer_of, L = case
    lo = list(layer_of) if as_list else layer_of
    norms, nfg, sq_pre, sq_post = _gradients(rec, lo, L)
    want_n, want_nf, want_pre, want_post = _loop(rec, layer_of, L)
    if not rec.post:
        assert np.isnan(norms).all() and (nfg == -1).all() and sq_pre == sq_post == 0.0
        return
    assert _same(norms.tolist(), want_n), (norms, want_n)
    assert nfg.tolist() == want_nf
    assert _same([sq_pre, sq_post], [want_pre, want_post])


def test_two_layer_maps_of_the_same_length_give_their_own_layers():
    rec = StepRecord(step=0, detail=False)
    rec.post = {0: 3.0, 1: 4.0}
    rec.nf = {0: 0, 1: 2}
    a = _gradients(rec, (0, 1), 2)
    b = _gradients(rec, (1, 0), 2)    # same length, other layers: the structure changed
    assert a[0].tolist() == [3.0, 4.0] and a[1].tolist() == [0, 2]
    assert b[0].tolist() == [4.0, 3.0] and b[1].tolist() == [2, 0]
