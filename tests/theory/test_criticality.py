"""Critical line and phase diagram, against analyze() (exact quadrature) and known values."""

import math

import numpy as np
import pytest

from gradhealth.errors import ParameterError
from gradhealth.theory.criticality import (
    PhaseDiagram,
    critical_line,
    critical_sigma_w2,
    phase_diagram,
)
from gradhealth.theory.meanfield import analyze


def test_known_critical_points():
    assert critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-9)      # tanh'(0) = 1
    assert critical_sigma_w2("erf", 0.0) == pytest.approx(math.pi / 4, rel=1e-9)  # erf'(0)^2 = 4/pi
    assert critical_sigma_w2("hard_tanh", 0.0) == pytest.approx(1.0, abs=1e-9)
    for b in (0.0, 0.05, 1.0):
        assert critical_sigma_w2("relu", b) == 2.0
        assert critical_sigma_w2("linear", b) == 1.0
        assert critical_sigma_w2("relu", b, dropout_keep=0.8) == pytest.approx(1.6)
    assert critical_sigma_w2("leaky_relu", 0.1) == pytest.approx(2 / (1 + 0.01 ** 2))
    # Schoenholz et al. 2017 (Fig. 1): tanh at sigma_b2 = 0.05 is critical near sigma_w2 = 1.76
    assert critical_sigma_w2("tanh", 0.05) == pytest.approx(1.76, abs=0.01)


@pytest.mark.parametrize("name", ["tanh", "erf", "sigmoid", "hard_tanh", "selu", "elu"])
@pytest.mark.parametrize("sb2", [0.01, 0.05, 0.3])
def test_critical_line_has_chi_1_equal_one(name, sb2):
    w = critical_sigma_w2(name, sb2)
    r = analyze(name, w, sb2)
    assert r.chi_1 == pytest.approx(1.0, abs=1e-9)
    assert r.phase == "critical"
    assert analyze(name, w * 0.98, sb2).phase == "ordered"
    assert analyze(name, w * 1.02, sb2).phase == "chaotic"


def test_dropout_scales_the_critical_weight_variance_by_rho():
    for sb2 in (0.0, 0.05, 0.2):
        assert critical_sigma_w2("tanh", sb2, dropout_keep=0.7) == pytest.approx(
            0.7 * critical_sigma_w2("tanh", sb2), rel=1e-9)


def test_critical_line_vectorised_matches_scalar():
    b = np.array([0.0, 0.02, 0.1, 0.3])
    line = critical_line("tanh", b)
    assert line.shape == b.shape
    np.testing.assert_allclose(line, [critical_sigma_w2("tanh", x) for x in b], rtol=1e-12)
    assert np.all(np.diff(line) > 0)  # more bias needs more weight variance to become chaotic


def test_no_transition_is_reported_not_invented():
    # softplus never reaches chi_1 = 1 at a finite fixed point; gelu at sigma_b2 = 0 jumps over it
    with pytest.raises(ParameterError, match="transition"):
        critical_sigma_w2("softplus", 0.05)
    assert np.isnan(critical_line("softplus", [0.05])).all()
    assert np.isnan(critical_line("gelu", [0.0])).all()
    below, above = analyze("gelu", 2.3, 0.0), analyze("gelu", 2.4, 0.0)
    assert below.chi_1 < 0.6 and above.chi_1 > 1.1   # first-order jump, no critical point


@pytest.mark.parametrize("name", ["tanh", "erf", "sigmoid", "gelu", "relu", "hard_tanh"])
def test_phase_diagram_agrees_with_analyze(name):
    w = np.linspace(0.05, 4.0, 41)
    b = np.linspace(0.0, 0.3, 31)
    pd = phase_diagram(name, w, b)
    assert isinstance(pd, PhaseDiagram) and pd.chi_1.shape == (b.size, w.size)
    smooth = name != "hard_tanh"
    for i in range(0, b.size, 6):
        for j in range(0, w.size, 5):
            r = analyze(name, w[j], b[i])
            assert pd.q_star[i, j] == pytest.approx(r.q_star, rel=1e-6, abs=1e-12)
            assert pd.chi_1[i, j] == pytest.approx(r.chi_1, rel=1e-6)
            assert pd.c_star[i, j] == pytest.approx(r.c_star, abs=1e-6 if smooth else 3e-3)
            assert pd.chi_c[i, j] == pytest.approx(r.chi_c, rel=1e-6 if smooth else 1e-2)
            if smooth and math.isfinite(r.xi_c):
                assert pd.xi_c[i, j] == pytest.approx(r.xi_c, rel=1e-4)
            assert pd.phase[i, j] == r.phase
    np.testing.assert_allclose(pd.critical, critical_line(name, b), rtol=1e-12)


def test_phase_diagram_says_when_its_correlations_are_approximate():
    w, b = np.linspace(0.05, 4.0, 30), np.linspace(0.0, 0.3, 20)
    assert phase_diagram("tanh", w, b).note == ""
    assert phase_diagram("relu", w, b).note == ""
    note = phase_diagram("hard_tanh", w, b).note
    assert "approximate" in note and "analyze() is exact" in note


def test_phase_diagram_with_dropout_agrees_with_analyze():
    w, b = np.array([0.5, 1.5, 3.0]), np.array([0.0, 0.1])
    pd = phase_diagram("tanh", w, b, dropout_keep=0.8)
    for i in range(b.size):
        for j in range(w.size):
            r = analyze("tanh", w[j], b[i], dropout_keep=0.8)
            assert pd.c_star[i, j] == pytest.approx(r.c_star, abs=1e-6)
            assert pd.chi_c[i, j] == pytest.approx(r.chi_c, rel=1e-6)


def test_relu_phase_diagram_is_a_vertical_line():
    w, b = np.linspace(0.5, 3.5, 7), np.linspace(0.0, 0.5, 6)
    pd = phase_diagram("relu", w, b)
    np.testing.assert_allclose(pd.chi_1, np.broadcast_to(w / 2, pd.chi_1.shape))
    assert np.all(pd.critical == 2.0)
    assert np.all(np.isinf(pd.q_star[1:, w > 2]))   # no fixed point right of the line (sigma_b2 > 0)


def test_phase_diagram_bad_input():
    with pytest.raises(ParameterError):
        phase_diagram("tanh", [-1.0, 1.0], [0.0])
    with pytest.raises(ParameterError):
        phase_diagram("tanh", [1.0, float("nan")], [0.0])
    with pytest.raises(ParameterError):
        phase_diagram("tanh", [[1.0]], [0.0])
    with pytest.raises(ParameterError):
        phase_diagram("nope", [1.0], [0.0])
    with pytest.raises(ParameterError):
        critical_sigma_w2("tanh", -0.1)
    with pytest.raises(ParameterError):
        critical_line("tanh", [0.1], dropout_keep=0.0)


def test_plot_draws_critical_line_and_inits():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pd = phase_diagram("tanh", np.linspace(0.05, 4, 30), np.linspace(0, 0.3, 20))
    for color in ("chi_1", "xi_c"):
        ax = pd.plot(color=color)
        labels = [ln.get_label() for ln in ax.get_lines()]
        assert any("critical" in s for s in labels) and any("He" in s for s in labels)
        plt.close(ax.figure)
    with pytest.raises(ParameterError):
        pd.plot(color="nope")
    assert set(pd.to_dict()) >= {"chi_1", "xi_c", "q_star", "critical"}
