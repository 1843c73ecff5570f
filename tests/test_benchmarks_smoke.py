"""benchmarks/bench_watch.py runs and writes its JSON (a smoke test: no timing is asserted)."""

import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python -m pytest` puts the repository root there; `pytest` does not
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_watch  # noqa: E402

CONFIGS = {"bare", "floor", "every=1", "every=10", "every=1+default", "every=10+default", "detail"}
KEYS = {"workload", "name", "optimizer", "config", "ms_per_step", "spread_ms", "ratio_vs_bare",
        "ratio_vs_floor", "steps", "repeats"}


def test_bench_watch_main_writes_one_record_per_config(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench_watch.main(["--workloads", "resmlp8x256", "--steps", "10", "--repeats", "1",
                           "--no-replay", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert {"date", "torch", "threads"} <= set(data["meta"])
    recs = data["records"]
    assert {r["config"] for r in recs} == CONFIGS and len(recs) == len(CONFIGS)
    by = {r["config"]: r for r in recs}
    for r in recs:
        assert set(r) == KEYS
        assert r["workload"] == "resmlp8x256" and r["steps"] == 10 and r["repeats"] == 1
        assert math.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0
        # the ratios are the ratios of the reported medians (not of some other statistic)
        assert r["ratio_vs_bare"] == pytest.approx(r["ms_per_step"] / by["bare"]["ms_per_step"])
        assert r["ratio_vs_floor"] == pytest.approx(r["ms_per_step"] / by["floor"]["ms_per_step"])
    assert "floor" in capsys.readouterr().out


def test_unknown_workload_is_refused():
    with pytest.raises(SystemExit):
        bench_watch.main(["--workloads", "nope"])


def test_floor_read_is_the_per_gradient_norm():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7)),
          torch.nn.Parameter(torch.randn(2, dtype=torch.float64)), torch.nn.Parameter(torch.randn(4))]
    for p in ps[:3]:
        p.grad = torch.randn_like(p)  # ps[3] has no gradient: skipped
    got = bench_watch.floor_read(ps)
    want = [math.sqrt(sum(v * v for v in p.grad.reshape(-1).tolist())) for p in ps[:3]]
    # grouped by (device, dtype): the two float32 gradients first, then the float64 one
    assert got == pytest.approx(want, rel=1e-5)


def test_block_figure_counts_the_one_slow_step_of_each_window(monkeypatch):
    # every=10: one logged (slow) step per 10-step window must be in the figure, not filtered out
    assert bench_watch.block_figure([1.0] * 9 + [11.0]) == pytest.approx(2.0)
    # a block shorter than WINDOW * SETTLE_EVERY is one window: its mean, settling included
    ts = [1.0] * 9 + [11.0] + [1.0] * 9 + [51.0]
    assert len(ts) < bench_watch.WINDOW * bench_watch.SETTLE_EVERY
    assert bench_watch.block_figure(ts) == pytest.approx(sum(ts) / len(ts))
    # windows of WINDOW * SETTLE_EVERY steps where the block holds them: the median over
    # windows drops one disturbed window
    monkeypatch.setattr(bench_watch, "SETTLE_EVERY", 1)
    ts = [1.0] * 9 + [11.0] + [1.0] * 9 + [11.0] + [100.0] * 10
    assert bench_watch.block_figure(ts) == pytest.approx(2.0)


def test_bench_report_runs_and_the_first_bad_step_is_on_the_page():
    from benchmarks import bench_report

    r = bench_report.run_shape(steps=60, layers=7, detail=2)
    # per-layer rows on every 2nd of 60 steps: 30 x 7; the planted first bad step is named
    assert r["rows"] == 30 * 7 and r["first_bad_step_named"] is True
    assert r["html_kb"] > 0 and all(math.isfinite(r[k]) for k in ("report_s", "load_columns_s", "load_dicts_s"))


def test_bench_ddp_runs_two_ranks_and_writes_consistent_ratios(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    from benchmarks import bench_ddp

    out = tmp_path / "ddp.json"
    bench_ddp.main(["--quick", "--workloads", "resmlp8x256", "--repeats", "1", "--steps", "10", "--json", str(out)])
    recs = json.loads(out.read_text())["records"]
    assert {r["config"] for r in recs} == CONFIGS and len(recs) == len(CONFIGS)
    by = {r["config"]: r for r in recs}
    for r in recs:
        assert r["world"] == 2 and math.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0
        assert r["ratio_vs_bare"] == pytest.approx(r["ms_per_step"] / by["bare"]["ms_per_step"])
        assert r["ratio_vs_floor"] == pytest.approx(r["ms_per_step"] / by["floor"]["ms_per_step"])


def test_bench_paired_block_ratios_are_the_ratios_of_the_timed_sums(monkeypatch):
    """One block of a few rounds: the reported ratios are the block's sums divided (recomputed
    here from the per-step times the copies report; the watched ones add their settling)."""
    import torch

    from benchmarks import bench_paired

    times: dict[str, list[float]] = {}
    step = bench_paired._Copy.step

    def recording(self):
        t = step(self)
        times.setdefault(self.key, []).append(t)
        return t

    monkeypatch.setattr(bench_paired._Copy, "step", recording)
    torch.manual_seed(0)
    wl = bench_paired.WORKLOADS["resmlp8x256"](blocks=1, width=16, batch=4)
    res = bench_paired.bench(wl, rounds=20, blocks=1)
    assert set(res) == set(bench_paired.CONFIGS)
    # the 20 timed steps of each configuration come last (before them: 3 warm-up rounds, run
    # as "bare" by every copy, and a watcher's untimed step 0)
    sums = {k: sum(v[-20:]) for k, v in times.items()}
    assert {k: len(v) for k, v in times.items()} == {"bare": 35, "bare/2": 20, "floor": 20, "every=1": 21,
                                                      "every=10": 21}
    for k in ("bare", "bare/2", "floor"):
        assert res[k]["ratio_vs_bare"] == pytest.approx(sums[k] / sums["bare"], rel=1e-12)
        assert res[k]["ratio_vs_floor"] == pytest.approx(sums[k] / sums["floor"], rel=1e-12)
    for k in ("every=1", "every=10"):   # the watched copies' blocks also hold their settling
        assert res[k]["ratio_vs_bare"] >= sums[k] / sums["bare"] * (1 - 1e-12)


def test_bench_paired_main_writes_one_record_per_config_and_refuses_bad_counts(tmp_path, capsys):
    from benchmarks import bench_paired

    out = tmp_path / "paired.json"
    assert bench_paired.main(["--workloads", "resmlp8x256", "--rounds", "2", "--blocks", "1",
                              "--json", str(out)]) == 0
    recs = json.loads(out.read_text())["records"]
    assert [r["config"] for r in recs] == list(bench_paired.CONFIGS)
    assert all(math.isfinite(r["ratio_vs_bare"]) and r["ratio_vs_bare"] > 0 for r in recs)
    for bad in (["--rounds", "0"], ["--blocks", "-1"], ["--workloads", "nope"]):
        with pytest.raises(SystemExit) as e:
            bench_paired.main(bad)
        assert e.value.code == 2
        assert "bench_paired" in capsys.readouterr().err


def test_watch_phases_profiles_and_refuses_bad_input(tmp_path, capsys):
    from benchmarks import watch_phases

    out = tmp_path / "phases.json"
    assert watch_phases.main(["--workloads", "resmlp8x256", "--steps", "3", "--repeats", "1",
                              "--json", str(out)]) == 0
    rec = json.loads(out.read_text())[0]
    # the entry points' total holds each phase timed inside them
    assert rec["phases_ms"]["hooks"] >= rec["phases_ms"]["measure_grads"] > 0
    for bad in (["--workloads", "resmlp"], ["--steps", "0"], ["--every", "-1"]):
        with pytest.raises(SystemExit) as e:
            watch_phases.main(bad)
        assert e.value.code == 2
        assert "watch_phases" in capsys.readouterr().err
