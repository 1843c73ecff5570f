"""The gallery's trainability section (issue 14): its grid is the CLI's coarse preset, its
figure draws the theory it claims (the red curve is k * xi_c from the mean-field code, the
white one 6 * xi_c), and its table quotes the result it drew. The experiment itself runs on a
tiny grid here (the demo runs the coarse one)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

from gradhealth.experiments import trainability
from gradhealth.gallery import SECTIONS
from gradhealth.gallery import trainability as section
from gradhealth.theory.meanfield import analyze

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny():
    return trainability("tanh", [1.0, 1.75, 4.0], [4, 48], steps=100)


def test_the_section_is_in_the_gallery_and_uses_the_clis_coarse_grid():
    from gradhealth.cli.trainability import GRIDS

    assert "trainability" in SECTIONS
    w, d = GRIDS["coarse"]
    assert tuple(w) == section.SIGMA_W2 and tuple(d) == section.DEPTHS
    figs = section.figures()
    assert [f.slug for f in figs] == ["trainability_tanh", "trainability_relu"]
    assert all(f.draw and f.table and f.caption for f in figs)


def test_the_figure_draws_k_xi_c_from_the_mean_field_code(tiny, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(section, "measure", lambda act: tiny)
    fig = section.figures()[0].draw()
    ax = fig.axes[0]
    red = next(ln for ln in ax.get_lines() if ln.get_color() == "r")
    white = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "--")
    top = 48 * 1.2 * 10
    for line, k in ((red, tiny.fit.k), (white, 6.0)):
        w, y = line.get_xdata(), line.get_ydata()
        pick = np.linspace(0, len(w) - 1, 7).astype(int)
        for i in pick:
            xi = analyze("tanh", float(w[i]), 0.05).xi_c
            want = min(k * xi, top) if math.isfinite(xi) else top
            assert y[i] == pytest.approx(want, rel=1e-6), (w[i], k)
    plt.close(fig)


def test_the_table_quotes_the_result(tiny, monkeypatch):
    monkeypatch.setattr(section, "measure", lambda act: tiny)
    row = section.table("tanh").splitlines()[-1].strip("|").split("|")
    cells = [c.strip() for c in row]
    assert int(cells[0]) == tiny.trainable.size and int(cells[1]) == int(tiny.trainable.sum())
    assert float(cells[3]) == pytest.approx(tiny.fit.k, rel=1e-2)
    assert cells[4] == f"{100 * tiny.fit.agreement:.0f}%"
