"""The cure gallery section: one figure per canonical case, with a before/after table."""

import matplotlib

from gradhealth.gallery import SECTIONS, cure
from gradhealth.gallery._cases import CASES


def test_section_lists_every_case():
    assert "cure" in SECTIONS
    figs = cure.figures()
    assert [f.slug for f in figs] == [f"cure_{c.slug}" for c in CASES] + ["cure_training_time"]
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


def test_training_time_remedies_rescue_a_real_run():
    import math

    r = cure.training_time_runs()
    last = {k: v["curve"][-1][1] for k, v in r.items()}
    assert math.isnan(last["nan_none"]) and last["nan_guard"] < 0.1 and r["nan_guard"]["skipped"] == 1
    assert last["spike_none"] > 100 * max(last["spike_clip"], last["spike_autoclip"])
    assert last["spike_clip"] < 0.1 and last["spike_autoclip"] < 0.1
