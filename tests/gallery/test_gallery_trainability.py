"""The trainability gallery section's measurement (issue 14): the grid the section runs (its own
SIGMA_W2 x DEPTHS, in up to 2 worker processes) puts every cell where it belongs. Oracle: each
cell re-trained directly, in this process, from (sigma_w2, depth) alone; its accuracy and its
trained flag must be the section's at [depth index, sigma_w2 index]. A swapped axis, a
mis-ordered record or a worker that trained another cell fails it."""

from __future__ import annotations

import math

import pytest
import torch

from gradhealth.experiments._cells import load_data
from gradhealth.experiments._runner import compute_cell
from gradhealth.gallery import trainability as section


@pytest.fixture(scope="module")
def measured():
    mp = pytest.MonkeyPatch()
    # a tiny grid, asymmetric (3 sigma_w2 x 2 depths) so that a transposed result cannot match
    mp.setattr(section, "SIGMA_W2", (1.0, 1.75, 4.0))
    mp.setattr(section, "DEPTHS", (3, 40))
    try:
        yield section.measure.__wrapped__("tanh")   # the uncached function: this grid, not the demo's
    finally:
        mp.undo()


def test_the_section_measures_its_own_grid(measured):
    assert measured.spec.sigma_w2 == (1.0, 1.75, 4.0) and measured.spec.depths == (3, 40)
    assert measured.accuracy.shape == (2, 3)
    # the mean-field curve drawn is for the grid measured
    assert list(measured.curve.sigma_w2) == pytest.approx([1.0, 1.75, 4.0])


def test_every_cell_matches_training_it_directly(measured):
    spec = measured.spec
    x, y = (torch.from_numpy(a) for a in load_data(spec.data))
    flags = set()
    for i, depth in enumerate(spec.depths):
        for j, w in enumerate(spec.sigma_w2):
            rec = compute_cell(spec, w, depth, x, y)
            got = float(measured.accuracy[i, j])
            if math.isnan(rec["accuracy"]):
                assert math.isnan(got), (depth, w)
            else:
                assert got == pytest.approx(rec["accuracy"], abs=1e-9), (depth, w)
            trained = math.isfinite(rec["accuracy"]) and rec["accuracy"] >= spec.threshold
            assert bool(measured.trainable[i, j]) == trained, (depth, w)
            flags.add(trained)
    # the grid has both outcomes, so the comparison could fail in either direction
    assert flags == {True, False}
