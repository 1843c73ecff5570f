"""The report of a real watched run with a NaN planted in one layer, and of a real probe:
first screen, escaping of hostile names, figures that never drop NaN (oracle: the Run rows)."""

from __future__ import annotations

import html as std_html
import math
import re

import numpy as np
import pytest

from gradhealth.errors import ParameterError
from gradhealth.events import Event
from gradhealth.report import Report, visible
from gradhealth.report import figures as F
from gradhealth.store import Run, load_run

from .conftest import ANSI_NAME, POISON_NAME, POISON_STEP, SCRIPT_NAME


def _legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def test_first_screen_names_the_planted_layer_and_step(poisoned_run_dir):
    rep = Report.from_run(poisoned_run_dir)
    assert rep.verdict == "nonfinite"
    assert rep.first["layer"] == POISON_NAME
    assert rep.first["since"] == POISON_STEP
    assert rep.prescriptions and all(p["code"] for p in rep.prescriptions)
    page = rep.to_html_string()
    m = re.search(r'id="first-problem">(.*?)</p>', page, re.S)
    assert m, "the first screen has no first-problem line"
    assert POISON_NAME in m.group(1) and f'class="step">{POISON_STEP}<' in m.group(1)


def test_hostile_names_are_escaped_in_html(poisoned_html):
    page = poisoned_html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "\x1b" not in page
    assert std_html.escape(SCRIPT_NAME) in page          # shown as text
    assert std_html.escape(visible(ANSI_NAME)) in page  # ESC shown as \x1b
    assert "http://" not in page and "https://" not in page


def test_rich_output_makes_control_characters_visible():
    from rich.console import Console

    ev = Event(step=3, kind="nonfinite", layer=ANSI_NAME + "\u202e\u2028", severity="error",
               message="bad " + ANSI_NAME, remedy="fix()")
    rep = Report(kind="run", source="/tmp/\x1b]0;title\x07", verdict="nonfinite", headline="x",
                 first={"step": 3, "since": 3, "layer": ev.layer, "kind": "nonfinite",
                        "message": ev.message}, events=[ev])
    con = Console(record=True, width=120, color_system=None, file=open("/dev/null", "w"))
    con.print(rep)
    text = con.export_text()
    for bad in ("\x1b", "\u202e", "\u2028", "\x07"):
        assert bad not in text
    assert "\\x1b[31mred" in text and "\\u202e" in text and "\\u2028" in text


def test_visible_escapes_every_hostile_class():
    assert visible("a\x1bb") == "a\\x1bb"
    assert visible("\x00\x7f\x9b") == "\\x00\\x7f\\x9b"
    assert visible("x\u202ey\u2066\u200b\ufeff") == "x\\u202ey\\u2066\\u200b\\ufeff"
    assert visible("l1\nl2") == "l1\\nl2" and visible("l1\nl2", keep_newlines=True) == "l1\nl2"
    assert visible("tab\tok <b>") == "tab\\tok <b>"  # HTML escaping is the template's job
    assert visible("tab\tok", keep_newlines=True) == "tab\tok"


def test_heatmap_counts_every_nan_cell(poisoned_run_dir):
    run = load_run(poisoned_run_dir)
    truth = sum(1 for r in run.layer_stats if r["grad_norm"] is not None and math.isnan(r["grad_norm"]))
    assert truth >= 3
    ax = F.plot_grad_heatmap(run)
    assert f"NaN: {truth} cells" in _legend(ax)
    # the first non-finite step is marked with its number
    assert any(f"step {POISON_STEP}" in t.get_text() for t in ax.texts)


def test_loss_and_norm_figures_count_nan_steps(poisoned_run_dir):
    run = load_run(poisoned_run_dir)
    nan_loss = sum(1 for s in run.steps if s["loss"] is not None and math.isnan(s["loss"]))
    nan_norm = sum(1 for s in run.steps if s["global_grad_norm"] is not None
                   and math.isnan(s["global_grad_norm"]))
    assert nan_loss == 1 and nan_norm == 1
    assert f"loss NaN: {nan_loss} step(s)" in _legend(F.plot_loss(run))
    ax = F.plot_global_norm(run)
    assert f"pre-clip norm NaN: {nan_norm} step(s)" in _legend(ax)
    skipped = sum(1 for s in run.steps if s["skipped"])
    assert f"skipped step ({skipped})" in _legend(ax)
    c, m = F.clip_fraction(run)
    oracle = sum(1 for s in run.steps if s["global_grad_norm"] is not None
                 and math.isfinite(s["global_grad_norm"]) and s["global_grad_norm_clipped"] is not None
                 and s["global_grad_norm_clipped"] < s["global_grad_norm"] * (1 - 1e-6))
    assert c == oracle and f"{c} of {m} steps clipped" in ax.get_title()
    F.plot_update_ratio(run)


def _big_run(n_steps: int, n_layers: int, nan_at: tuple[int, int], inf_at: tuple[int, int]) -> Run:
    rng = np.random.default_rng(0)
    vals = 10.0 ** rng.uniform(-3, 0, size=(n_steps, n_layers))
    vals[nan_at] = math.nan
    vals[inf_at] = math.inf
    layers = [{"index": i, "name": f"l{i}", "type": "Linear", "n_params": 10} for i in range(n_layers)]
    stats = [{"step": s, "layer": li, "grad_norm": float(vals[s, li])}
             for s in range(n_steps) for li in range(n_layers)]
    steps = [{"step": s, "loss": 1.0, "global_grad_norm": 1.0, "global_grad_norm_clipped": None,
              "lr": 0.1, "skipped": 0, "nonfinite_count": 0, "time": 0.0} for s in range(n_steps)]
    return Run(run_dir="mem", meta={}, layers=layers, steps=steps, layer_stats=stats, events=[])


def test_downsampled_heatmap_keeps_the_single_nan_and_counts():
    n_steps, n_layers = 20_000, 30
    run = _big_run(n_steps, n_layers, nan_at=(12_345, 7), inf_at=(3, 29))
    ax = F.plot_grad_heatmap(run)
    assert "NaN: 1 cells" in _legend(ax) and "+Inf: 1 cells" in _legend(ax)
    special = ax.get_images()[1].get_array()
    assert special.shape[1] <= F.MAX_COLS < n_steps
    cols = np.nonzero(special[7] == F.NAN)[0]
    assert cols.size == 1, "the one NaN cell must survive binning as one marked column"
    assert np.count_nonzero(special == F.POSINF) == 1 and special[29, 0] == F.POSINF


def test_grid_oracle_small():
    run = _big_run(5, 3, nan_at=(2, 1), inf_at=(4, 0))
    run.layer_stats[0]["grad_norm"] = 0.0
    g = F.layer_grid(run)
    assert F.nonfinite_counts(g.kind) == {"NaN": 1, "+Inf": 1, "-Inf": 0, "0 (underflow)": 1}


def test_probe_report_and_json_round_trip(probe_result, tmp_path):
    from gradhealth.report.html import probe_from_dict

    rep = Report.from_probe(probe_result)
    assert rep.verdict == probe_result.verdict != "healthy"
    assert rep.first["layer"] is not None and rep.prescriptions
    back = probe_from_dict(__import__("json").loads(probe_result.to_json()))
    assert back.to_dict() == probe_result.to_dict()
    path = tmp_path / "probe.json"
    path.write_text(probe_result.to_json())
    rep2 = Report.from_probe(path)
    assert rep2.verdict == rep.verdict and rep2.first == rep.first
    figs = rep2.render_figures()
    assert figs and all("png" in f for f in figs), [f.get("error") for f in figs]


def test_unreadable_sources_give_a_report_that_says_why(tmp_path):
    (tmp_path / "empty").mkdir()
    rep = Report.from_run(tmp_path / "empty")
    assert rep.kind == "unreadable" and "run.sqlite" in rep.problems[0]
    assert "unreadable" in rep.to_html_string().lower()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert Report.from_probe(bad).kind == "unreadable"


def test_notebook_and_image_outputs(poisoned_run_dir, tmp_path):
    rep = Report.from_run(poisoned_run_dir)
    frag = rep._repr_html_()
    assert "<html" not in frag and "first-problem" in frag
    for fmt in ("png", "svg"):
        p = rep.to_image(tmp_path / f"r.{fmt}")
        assert p.stat().st_size > 1000


def test_write_demo_report_links_every_report(poisoned_run_dir, probe_result, tmp_path):
    from gradhealth.report import write_demo_report

    index = write_demo_report(tmp_path / "demo", [("broken run", Report.from_run(poisoned_run_dir)),
                                                  ("probe", Report.from_probe(probe_result))],
                              links=[("gallery", "gallery/index.html")])
    page = index.read_text()
    for href in ("broken_run.html", "probe.html", "gallery/index.html"):
        assert f'href="{href}"' in page
    assert (tmp_path / "demo" / "broken_run.html").stat().st_size > 10_000


def test_counted_nonfinite_gradients_are_never_reported_healthy(tmp_path):
    """A store whose layer rows hold a NaN and an Inf but which has no event (events lost,
    or another writer): the verdict is nonfinite at the earliest bad (step, layer) read
    independently from the rows, not "healthy" (it was healthy before this check)."""
    from gradhealth.store import RunStore

    run_dir = tmp_path / "run"
    cells = {(7, 2): math.nan, (4, 1): math.inf}
    with RunStore(run_dir) as st:
        st.write_meta({"model": "Synthetic"})
        st.write_layers([{"index": i, "name": f"l{i}", "type": "Linear", "n_params": 4} for i in range(3)])
        st.append_steps([{"step": s, "loss": 1.0, "global_grad_norm": 1.0} for s in range(10)])
        st.append_layer_stats([{"step": s, "layer": i, "grad_norm": cells.get((s, i), 0.5)}
                               for s in range(10) for i in range(3)])
    rows = load_run(run_dir).layer_stats
    first = min((r["step"], r["layer"]) for r in rows if not math.isfinite(r["grad_norm"]))
    rep = Report.from_run(run_dir)
    assert rep.verdict == "nonfinite" and not rep.healthy
    assert rep.headline.endswith(f"l{first[1]} at step {first[0]}"), rep.headline
    assert any("no event describes them" in p for p in rep.problems)


def _many_steps_store(run_dir, n_steps=400, n_layers=6):
    """A store of n_steps logged steps: a NaN, an Inf and a zero planted in grad_norm, a
    non-finite count, and update ratios on every 50th step (the detail steps)."""
    from gradhealth.store import RunStore

    special = {(123, 2): math.nan, (250, 5): math.inf, (333, 0): 0.0}
    with RunStore(run_dir) as st:
        st.write_meta({"model": "Synthetic"})
        st.write_layers([{"index": i, "name": f"l{i}", "type": "Linear", "n_params": 4} for i in range(n_layers)])
        st.append_steps([{"step": s, "loss": 1.0 / (s + 1), "global_grad_norm": 1.0} for s in range(n_steps)])
        st.append_layer_stats([
            {"step": s, "layer": i, "grad_norm": special.get((s, i), 0.1 + 0.001 * s + i),
             "nonfinite": int((s, i) in special and special[(s, i)] != 0.0),
             **({"update_ratio": 1e-3 * (i + 1)} if s % 50 == 0 else {})}
            for s in range(n_steps) for i in range(n_layers)])
    return special


def test_a_sampled_read_keeps_every_special_row_and_the_values_it_reads(tmp_path):
    """load_run(max_steps=...) against the full read (the oracle): the rows it returns are full
    rows with the same values; every NaN/Inf/zero/non-finite-count row and every update-ratio
    row is among them; the first and the last step are read."""
    special = _many_steps_store(tmp_path / "run")
    fields = ("grad_norm", "nonfinite", "update_ratio")
    full = load_run(tmp_path / "run", layer_stats="columns", fields=fields).columns
    part = load_run(tmp_path / "run", layer_stats="columns", fields=fields, max_steps=40).columns
    assert full.sampled is None and part.sampled == (40, 400)
    key = {(s, l): i for i, (s, l) in enumerate(zip(full.step.tolist(), full.layer.tolist()))}
    got = list(zip(part.step.tolist(), part.layer.tolist()))
    assert got == sorted(got) and len(set(got)) == len(got) < len(key)
    for j, k in enumerate(got):
        i = key[k]
        for f in fields:
            assert part.recorded[f][j] == full.recorded[f][i]
            a, b = part.values[f][j], full.values[f][i]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (k, f)
    for k in special:
        assert k in set(got), k
    ur = {(s, l) for (s, l), r in zip(zip(full.step.tolist(), full.layer.tolist()), full.recorded["update_ratio"]) if r}
    assert ur <= set(got)
    assert {0, 399} <= {s for s, _ in got}
    with pytest.raises(ParameterError, match="max_steps"):
        load_run(tmp_path / "run", layer_stats="columns", max_steps=1)


def test_a_report_drawn_from_sampled_steps_says_so_and_counts_like_the_full_one(tmp_path, monkeypatch):
    """Oracle: the same report read in full. Verdict, first problem, the layer table (last
    value, non-finite steps, first non-finite step) and the heatmap's counts of NaN/Inf/zero
    cells are identical; only the caption adds how many steps were drawn."""
    from gradhealth.report import html

    _many_steps_store(tmp_path / "run")
    monkeypatch.setattr(html, "MAX_DRAWN_STEPS", None)
    whole = Report.from_run(tmp_path / "run")
    monkeypatch.setattr(html, "MAX_DRAWN_STEPS", 40)
    drawn = Report.from_run(tmp_path / "run")
    assert (drawn.verdict, drawn.headline, drawn.first) == (whole.verdict, whole.headline, whole.first)
    assert drawn.layers == whole.layers
    cap = {f.slug: f.caption for f in drawn.figures}["grad_heatmap"]
    assert "Drawn from 40 of 400 logged steps" in cap
    assert "Drawn from" not in {f.slug: f.caption for f in whole.figures}["grad_heatmap"]
    runs = [load_run(tmp_path / "run", layer_stats="columns", fields=html.REPORT_FIELDS, max_steps=m)
            for m in (None, 40)]
    counts = [F.nonfinite_counts(F.layer_grid(r).kind) for r in runs]
    assert counts[0] == counts[1] and sum(counts[0].values()) >= 3
