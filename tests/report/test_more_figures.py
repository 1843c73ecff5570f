"""The report's time-series, mean-field and cure figures, and its columnar read of a run
(checked against a loop over the dict rows, the oracle)."""

import math
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.report import Report
from gradhealth.report import figures as F
from gradhealth.report import more_figures as M
from gradhealth.store import RunStore, load_run

NAN, INF = float("nan"), float("inf")


def _legend(ax) -> str:
    leg = ax.get_legend()
    return " | ".join(t.get_text() for t in leg.get_texts()) if leg else ""


def test_time_grads_figure_marks_and_counts_every_special_point(tmp_path):
    with RunStore(tmp_path) as store:
        store.write_layers([{"index": 0, "name": "rnn", "type": "LSTM", "n_params": 4},
                            {"index": 1, "name": "head", "type": "Linear", "n_params": 4}])
        store.append_steps([{"step": s, "loss": 1.0, "global_grad_norm": 1.0} for s in range(30)])
        rows = [{"step": s, "layer": 0, "grad_norm": 1.0, "time_grad": [1e-6, 1e-3, 1.0]} for s in range(30)]
        rows[17]["time_grad"] = [NAN, INF, 0.0]
        rows[20]["time_grad"] = [-INF, NAN, 1.0]
        store.append_layer_stats(rows + [{"step": 0, "layer": 1, "grad_norm": 2.0}])
    run = load_run(tmp_path)
    ax = M.plot_time_grads(run, "rnn")
    legend = _legend(ax)
    assert "NaN: 2 point(s)" in legend and "+Inf: 1 point(s)" in legend
    assert "-Inf: 1 point(s)" in legend and "0: 1 point(s)" in legend
    assert "first non-finite/zero: step 17" in legend
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) <= M.MAX_SERIES + 1  # drawn downsampled ...
    assert "of 30 detail steps" in ax.get_title()   # ... and says so
    rep = Report.from_run(tmp_path)
    assert [f.slug for f in rep.figures if f.slug.startswith("time_grads")] == ["time_grads_0"]
    assert all("png" in f for f in rep.render_figures(dpi=40))


def test_a_run_without_recurrent_layers_has_no_time_figure(tmp_path):
    from tests.report.conftest import train_poisoned

    train_poisoned(tmp_path / "r", steps=4, poison_step=None)
    assert not any(f.slug.startswith("time_grads") for f in Report.from_run(tmp_path / "r").figures)


def _mlp(depth, act, sigma_w2, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(64, 64)
        with torch.no_grad():
            lin.weight.normal_(0, math.sqrt(sigma_w2 / 64))
            lin.bias.zero_()
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(64, 4))


@pytest.mark.parametrize("sigma_w2", [0.7, 2.0])
def test_meanfield_line_matches_the_measured_gains_of_a_tanh_stack(sigma_w2):
    """Oracle: chi_1 of tanh by Gauss-Hermite quadrature here (independent of theory/), and
    the gains the probe measures by autograd."""
    res = gradhealth.probe(_mlp(16, nn.Tanh, sigma_w2), torch.randn(256, 64), jacobian=False)
    xs, pred, why = M.meanfield_prediction(res)
    assert why is None and len(xs) >= 10
    mf = res.meanfield
    # q* of the tanh map at sigma_b2 = 0 is 0 for sigma_w2 < 1 (chi_1 = sigma_w2), else a fixed point
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    q = 1.0
    for _ in range(500):
        q = mf.sigma_w2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + mf.sigma_b2
    chi = mf.sigma_w2 * np.sum(w * (1 - np.tanh(np.sqrt(q) * z) ** 2) ** 2)
    assert pred[-2] / pred[-1] == pytest.approx(math.sqrt(chi), rel=2e-2)
    measured = [res.layers[x].gain for x in xs]
    # the prediction tracks the measurement over the stack within a factor of 2
    assert max(abs(math.log(m / p)) for m, p in zip(measured, pred)) < math.log(2.0)
    ax = M.plot_probe_meanfield(res)
    assert "mean field: chi_1" in _legend(ax) and "against mean-field" in ax.get_title()


def test_no_meanfield_prediction_is_said_not_invented():
    res = gradhealth.probe(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(16, 8),
                           jacobian=False)
    assert res.meanfield is None
    ax = M.plot_probe_meanfield(res)
    assert ax.get_title().startswith("no mean-field prediction")
    assert not any(ln.get_linestyle() == "--" for ln in ax.get_lines())


def test_cure_report_shows_before_and_after(sigmoid_mlp, tmp_path):
    from gradhealth.remedies.prescribe import applies_to_model, apply_prescription

    model, x = sigmoid_mlp
    before = gradhealth.probe(model, x, jacobian=False)
    chosen = [p for p in before.prescriptions if applies_to_model(p)][:1]
    for p in chosen:
        apply_prescription(p, model, x)
    after = gradhealth.probe(model, x, jacobian=False)
    assert before.verdict == "vanishing" and after.verdict != before.verdict
    rep = Report.from_cure(before, after, chosen)
    assert rep.kind == "cure" and rep.verdict == after.verdict
    assert rep.headline.startswith("before: vanishing") and after.verdict in rep.headline
    assert rep.prescriptions[0]["code"] == chosen[0].code
    figs = rep.render_figures(dpi=40)
    assert figs[0]["slug"] == "cure" and all("png" in f for f in figs)
    ax = M.plot_cure(before, after)
    assert "before: vanishing" in _legend(ax) and f"after: {after.verdict}" in _legend(ax)
    html = rep.to_html(tmp_path / "cure.html").read_text()
    assert "before: vanishing" in html and chosen[0].code.split("(")[0] in html
    assert Report.from_cure(tmp_path / "missing.json", after).kind == "unreadable"


# -- the columnar read, against the dict rows ---------------------------------------------------
def _old_layer_rows(run):
    """The report's per-layer table as it was computed from one dict per row (the oracle)."""
    rows = {d["index"]: {**d, "last": None, "nonfinite_steps": 0, "first_nonfinite": None} for d in run.layers}
    for r in run.layer_stats:
        d, g = rows.get(r["layer"]), r.get("grad_norm")
        if d is None or g is None:
            continue
        d["last"] = g
        if not math.isfinite(g) or (r.get("nonfinite") or 0) > 0:
            d["nonfinite_steps"] += 1
            if d["first_nonfinite"] is None:
                d["first_nonfinite"] = r["step"]
    return list(rows.values())


def _old_grid(run, field):
    layers = [d for d in run.layers if any(r["layer"] == d["index"] and r[field] is not None for r in run.layer_stats)]
    steps = sorted({r["step"] for r in run.layer_stats if r[field] is not None})
    cell = {(r["layer"], r["step"]): r[field] for r in run.layer_stats if r[field] is not None}
    return [d["name"] for d in layers], steps, [[cell.get((d["index"], s)) for s in steps] for d in layers]


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a == b or (math.isnan(a) and math.isnan(b))


def test_report_reads_columns_and_they_equal_the_dict_path(poisoned_run_dir, tmp_path):
    from gradhealth.report.html import _layer_rows

    shutil.copytree(poisoned_run_dir, tmp_path / "r")
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")  # plant -Inf, +Inf and 0 next to the real NaN
    conn.execute("UPDATE layer_stats SET grad_norm = -9e999 WHERE step = 3 AND layer = 0")
    conn.execute("UPDATE layer_stats SET grad_norm = 9e999 WHERE step = 5 AND layer = 2")
    conn.execute("UPDATE layer_stats SET grad_norm = 0.0 WHERE step = 7 AND layer = 0")
    conn.commit()
    conn.close()
    dicts = load_run(tmp_path / "r")
    cols = load_run(tmp_path / "r", layer_stats="columns")
    assert cols.layer_stats == [] and len(cols.columns) == len(dicts.layer_stats)
    want = _old_layer_rows(dicts)
    got = _layer_rows(cols)
    assert [(d["index"], d["nonfinite_steps"], d["first_nonfinite"]) for d in got] == \
        [(d["index"], d["nonfinite_steps"], d["first_nonfinite"]) for d in want]
    assert all(_same(a["last"], b["last"]) for a, b in zip(got, want))
    assert sum(d["nonfinite_steps"] for d in got) >= 3
    for field in ("grad_norm", "update_ratio"):
        names, steps, cells = _old_grid(dicts, field)
        g = F.layer_grid(cols, field)
        assert g.names == names and g.steps.tolist() == steps
        for i, row in enumerate(cells):
            for j, v in enumerate(row):
                assert _same(v, None if g.kind[i, j] == F.MISSING else float(g.values[i, j]))
    assert F._first_nonfinite_step(cols) == F._first_nonfinite_step(dicts) == 3
    counts = F.nonfinite_counts(F.layer_grid(cols).kind)
    assert counts["-Inf"] == 1 and counts["+Inf"] >= 1 and counts["0 (underflow)"] >= 1 and counts["NaN"] >= 1
