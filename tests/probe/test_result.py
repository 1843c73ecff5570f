"""ProbeResult: frozen, JSON-safe (NaN/Inf kept as strings), printable, plottable."""

import dataclasses
import json
import math

import matplotlib
import pytest
import torch
from probenets import mlp
from torch import nn

from gradhealth.probe import LayerReport, ProbeResult, probe
from gradhealth.probe._analysis import Thresholds, depth_finding, theil_sen

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def broken():
    torch.manual_seed(0)
    return probe(mlp(50, 32, nn.Tanh, sigma_w2=4.0), torch.randn(16, 16))


def test_result_is_frozen(broken):
    with pytest.raises(dataclasses.FrozenInstanceError):
        broken.verdict = "healthy"
    with pytest.raises(dataclasses.FrozenInstanceError):
        broken.layers[0].gain = 1.0
    assert isinstance(broken.layers, tuple) and isinstance(broken.findings, tuple)


def test_to_dict_is_plain_json(broken):
    d = broken.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["verdict"] == broken.verdict and back["worst_layer"] == broken.worst_layer
    assert len(back["layers"]) == len(broken.layers)
    assert back["findings"][0]["kind"] == broken.findings[0].kind
    assert back["prescriptions"][0]["code"] == broken.prescriptions[0].code
    assert back["meanfield"]["activation"] == "tanh" and back["jacobian"]["top"]
    assert broken.to_json() == json.dumps(d, allow_nan=False)


def _fake(gains):
    layers = tuple(LayerReport(index=i, name=f"l{i}", type="Linear", calls=1, out_shape=(2, 3),
                               n_params=4, trainable="all", gain=g, gsc=g, grad_norm=g,
                               verdict="nonfinite" if g is not None and not math.isfinite(g) else "healthy")
                   for i, g in enumerate(gains))
    return ProbeResult(verdict="nonfinite", worst_layer="l1", layers=layers)


def test_nan_and_inf_survive_json_as_strings():
    r = _fake([math.nan, math.inf, 0.0, 1.0])
    back = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert [lr["gain"] for lr in back["layers"]] == ["nan", "inf", 0.0, 1.0]


def test_plot_marks_nan_inf_and_zero_instead_of_dropping_them():
    r = _fake([math.nan, math.inf, 0.0, 1.0, 2.0])
    ax = r.plot()
    texts = [t.get_text() for t in ax.texts]
    assert "NaN" in texts and "Inf" in texts and "0" in texts
    assert ax.get_yscale() == "log"
    labels = ax.get_legend().get_texts()
    assert any(t.get_text() == "NaN/Inf" for t in labels)


def test_plot_layers_and_time(broken):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert broken.plot(ax=ax) is ax
    assert ax.get_title().startswith("probe: exploding")
    assert len(ax.lines) >= 2
    plt.close(fig)


def test_rich_and_text_rendering(broken):
    from rich.console import Console

    console = Console(record=True, width=150, color_system=None)
    console.print(broken)
    text = console.export_text()
    assert "EXPLODING" in text and "worst layer: 0" in text and "prescriptions" in text
    assert "critical_" in text and "plain tanh stack" in text
    assert "EXPLODING" in str(broken) and "<" in broken._repr_html_()
    assert repr(broken).startswith("ProbeResult(verdict='exploding'")


def test_long_tables_elide_healthy_layers():
    torch.manual_seed(0)
    r = probe(mlp(45, 128, nn.ReLU, init="he"), torch.randn(8, 16), jacobian=False)
    assert r.verdict == "healthy"
    text = str(r)
    assert "(29 more, healthy)" in text  # 45 - 8 - 8 elided
    assert text.count(" Linear ") == 16  # the first 8 and the last 8 of 45


def test_layer_lookup(broken):
    assert broken.layer("0").index == 0
    with pytest.raises(KeyError, match="no layer named"):
        broken.layer("nope")


# ---- the verdict rule on hand-made numbers ------------------------------------------------
def test_theil_sen_is_robust_to_one_jump():
    y = [0.0] * 10 + [5.0]
    assert theil_sen(y) == 0.0
    assert theil_sen([2 * i + 1 for i in range(8)]) == pytest.approx(2.0)


def test_depth_finding_exponential_trend_vs_single_jump():
    th = Thresholds()
    trend = [1.2 ** (40 - i) for i in range(41)]        # x1.2 per layer towards the input
    f = depth_finding(trend, th)
    assert f.kind == "exploding" and f.worst == 0 and f.growth == pytest.approx(1.2)
    jump = [1e-3] * 20 + [1.0]                          # one drop (a global pool), no trend
    assert depth_finding(jump, th).kind == "healthy"
    big = [1e-5] * 20 + [1.0]                           # ...unless it is extreme
    f = depth_finding(big, th)
    assert f.kind == "vanishing" and f.worst_ratio == pytest.approx(1e-5)
    assert depth_finding([1.0, None, 0.5, 1.0], th).kind == "healthy"
    f = depth_finding([0.0] * 5 + [1e-4 ** (1 / 1)] + [1.0], th)
    assert f.kind == "vanishing"


def test_narrow_terminal_keeps_names_gains_and_verdicts():
    from rich.console import Console

    from gradhealth.report.probe_view import layers_table

    torch.manual_seed(0)
    r = probe(mlp(6, 32, nn.Tanh), torch.randn(8, 16), jacobian=False)
    for width in (80, 100):
        t = layers_table(r, width=width)
        names = [c.header for c in t.columns]
        assert {"layer", "gain", "verdict"} <= set(names) and "ratio" not in names
        con = Console(width=width, record=True, file=open("/dev/null", "w"))
        con.print(t)
        text = con.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        for lr in r.layers:  # every layer's name is visible, not squeezed away
            assert f" {lr.name} " in text
    wide = [c.header for c in layers_table(r, width=200).columns]
    assert "ratio" in wide and "output" in wide
