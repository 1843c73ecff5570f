"""Report speed and size on large runs: ``Report.from_run(run_dir).to_html(...)`` on a synthetic
run store of STEPS steps x LAYERS layers (per-layer gradient norms every DETAIL steps, parameter
norms and update ratios every 100th step as on watch's detail steps), with one NaN and one +Inf
cell planted.

The store is written directly with :class:`gradhealth.store.RunStore` (no training), so what is
timed is what a user waits for after training: reading the store (the columnar path,
``load_run(layer_stats="columns")``), drawing the downsampled figures and writing one HTML file.
The report reads the columns it draws, and on a run of more than 2400 logged steps only the rows
of 2400 evenly spaced steps plus every special (NaN/Inf/zero) and detail row. The baselines are
reading every row as columns (``load_run(layer_stats="columns")``) and as one dict per row
(``load_run(layer_stats=True)``, what the report did before the columnar reader). Each shape
also checks that the first step with a planted non-finite cell is named on the first screen
(downsampling must never hide it).

Run: ``python -m benchmarks.bench_report [--shapes 10000x500,100000x50] [--detail 1]``
(no asserts on time).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SHAPES = "10000x500,100000x50"


def _write_store(run_dir: Path, steps: int, layers: int, detail: int, seed: int = 0) -> int:
    """A run of ``steps`` x ``layers``; returns the first step with a non-finite cell."""
    from gradhealth.store import RunStore

    rng = np.random.default_rng(seed)
    nan_at = ((steps * 9 // 10) // detail * detail, layers // 3)
    inf_at = ((steps // 7) // detail * detail, layers - 1)
    with RunStore(run_dir) as st:
        st.write_meta({"model": "Synthetic", "source": "benchmarks.bench_report"})
        st.write_layers([{"index": i, "name": f"blocks.{i}.linear", "type": "Linear", "n_params": 4096}
                         for i in range(layers)])
        chunk = max(1, 200_000 // layers)
        for start in range(0, steps, chunk):
            rows = []
            srows = []
            for s in range(start, min(steps, start + chunk)):
                g = float(np.exp(-0.01 * s))
                srows.append({"step": s, "loss": 2.0 * g + 0.1, "global_grad_norm": g, "lr": 1e-3,
                              "skipped": 0})
                if s % detail:
                    continue
                norms = g * np.exp(-0.05 * np.arange(layers)) * (1 + 0.1 * rng.standard_normal(layers))
                for i in range(layers):
                    v = float(norms[i])
                    if (s, i) == nan_at:
                        v = math.nan
                    elif (s, i) == inf_at:
                        v = math.inf
                    row = {"step": s, "layer": i, "grad_norm": v, "nonfinite": int(not math.isfinite(v))}
                    if s % 100 == 0:     # parameter norms and update ratios: detail steps, as watch
                        row.update(param_norm=1.0, update_ratio=1e-3)
                    rows.append(row)
            st.append_steps(srows)
            st.append_layer_stats(rows)
            st.flush(timeout=600)
    return min(nan_at[0], inf_at[0])


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_shape(steps: int, layers: int, detail: int, baseline: bool = True) -> dict:
    """Write one store, then time the report (columnar) and the dict-per-row read."""
    from gradhealth.report import Report
    from gradhealth.store import load_run

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t_write, first_bad = _time(lambda: _write_store(run_dir, steps, layers, detail))
        db_mb = (run_dir / "run.sqlite").stat().st_size / 2**20
        out = Path(tmp) / "report.html"
        t_report, _ = _time(lambda: Report.from_run(run_dir).to_html(out))
        html = out.read_text(encoding="utf-8")
        nan = float("nan")
        t_cols = _time(lambda: load_run(run_dir, layer_stats="columns"))[0] if baseline else nan
        t_dicts = _time(lambda: load_run(run_dir, layer_stats=True))[0] if baseline else nan
        return {"steps": steps, "layers": layers, "detail": detail,
                "rows": (steps + detail - 1) // detail * layers, "store_mb": round(db_mb, 1),
                "write_s": round(t_write, 2), "report_s": round(t_report, 2),
                "load_columns_s": round(t_cols, 2), "load_dicts_s": round(t_dicts, 2),
                "html_kb": round(len(html.encode()) / 1024, 1),
                "first_bad_step_named": f"at step {first_bad}" in html}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="STEPSxLAYERS,... (default %(default)s)")
    ap.add_argument("--detail", type=int, default=1, help="per-layer rows every N steps (default 1)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the full reads (every row as columns, as dicts): minutes on huge stores")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    print(f"{'steps x layers':>16} {'rows':>10} {'store MB':>9} {'report s':>9} {'load cols s':>12} "
          f"{'load dicts s':>13} {'HTML KB':>8}  first bad step named")
    for steps, layers in shapes:
        r = run_shape(steps, layers, args.detail, baseline=not args.no_baseline)
        print(f"{steps:>8} x {layers:<5} {r['rows']:>10,} {r['store_mb']:>9} {r['report_s']:>9} "
              f"{r['load_columns_s']:>12} {r['load_dicts_s']:>13} {r['html_kb']:>8}  {r['first_bad_step_named']}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
