"""The cure gallery section: one figure per canonical case, with a before/after table."""

import matplotlib

from gradhealth.gallery import SECTIONS, cure
from gradhealth.remedies._cases import CASES


def test_section_lists_every_case():
    assert "cure" in SECTIONS
    figs = cure.figures()
    assert [f.slug for f in figs] == [f"cure_{c.slug}" for c in CASES]
    assert all(f.caption and f.draw and f.table for f in figs)


def test_sigmoid_figure_and_table():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = cure.draw_case("sigmoid_default")
    assert len(fig.axes) == 2
    plt.close(fig)
    table = cure.table_case("sigmoid_default")
    assert "replace_activation_(model, 'sigmoid', 'relu')" in table
    m = cure.measure("sigmoid_default")
    assert m["broken"]["spread"] > 1e4 and m["cured"]["spread"] < 10
    assert m["cured"]["curve"][-1] < 0.5 * m["broken"]["curve"][-1]
