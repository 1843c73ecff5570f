"""``gradhealth trainability``: train a grid of deep nets and see the trainable region follow k xi_c."""

from __future__ import annotations

from ._common import seed_int

HELP = "train nets over a sigma_w2 x depth grid: is the trainable region depth < k xi_c? (measured k)"
DESCRIPTION = """Train a plain fully connected net for every (sigma_w2, depth) cell on scikit-learn's digits
and draw the measured train accuracy with the mean-field curves depth = 6 xi_c (Schoenholz et
al. 2017) and depth = k xi_c for the k fitted to the cells. A cell is trainable when its train
accuracy after --steps SGD steps is at least --threshold (chance: 0.1). Finished cells are
cached (--cache), so an interrupted run resumes where it stopped.

Grids (--grid): coarse 7 x 5 cells (about 20 s on 2 cores), default 13 x 8, fine 25 x 11;
or give --sigma-w2 and --depths as comma lists.

Examples:
  gradhealth trainability --activation tanh --out trainability.png
  gradhealth trainability --activation relu --grid coarse --jobs 2 --json
  gradhealth trainability --activation tanh --variant residual --sigma-w2 1,2,3,4 --depths 8,32,128
"""

#: name -> (sigma_w2 grid, depth grid)
GRIDS = {
    "coarse": ([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], [4, 8, 16, 32, 64]),
    "default": ([1.0 + 0.25 * i for i in range(13)], [4, 8, 12, 16, 24, 32, 48, 64]),
    "fine": ([1.0 + 0.125 * i for i in range(25)], [2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]),
}


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth trainability`` to its subparser."""
    parser.add_argument("--activation", "-a", default="tanh", help="activation name (default: tanh)")
    parser.add_argument("--grid", choices=tuple(GRIDS), default="default", help="grid preset (default: default)")
    parser.add_argument("--sigma-w2", metavar="LIST", help="comma list of sigma_w2 (overrides --grid)")
    parser.add_argument("--depths", metavar="LIST", help="comma list of depths (overrides --grid)")
    parser.add_argument("--sigma-b2", type=float, default=0.05, help="bias variance (default: 0.05)")
    parser.add_argument("--variant", choices=("plain", "residual", "layernorm"), default="plain",
                        help="net family (default: plain)")
    parser.add_argument("--data", choices=("digits", "blobs"), default="digits", help="data set (default: digits)")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps per cell (default: 300)")
    parser.add_argument("--width", type=int, default=64, help="hidden width (default: 64)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01, momentum 0.9)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="train accuracy that counts as trainable (default: 0.5)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of every cell (default: 0)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="worker processes (default: the number of cores, at most 8)")
    parser.add_argument("--cache", metavar="DIR", help="per-cell cache (default: ~/.cache/gradhealth/trainability)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--out", "-o", default="trainability.png", help="figure file (default: trainability.png)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _list(text: str | None, name: str, default, cast):
    from ..errors import ParameterError

    if text is None:
        return default
    try:
        return [cast(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ParameterError(name, "gradhealth trainability", "a comma list of numbers", text,
                             f"pass e.g. --{name} 1,2,3") from None


def _spec(args):
    from ..experiments.trainability import make_spec

    w0, d0 = GRIDS[args.grid]
    w = _list(args.sigma_w2, "sigma-w2", w0, float)
    d = _list(args.depths, "depths", d0, float)
    return make_spec(args.activation, w, d, sigma_b2=args.sigma_b2, data=args.data, steps=args.steps,
                     width=args.width, lr=args.lr, threshold=args.threshold, seed=args.seed,
                     variant=args.variant)


def run(args) -> int:
    """Run ``gradhealth trainability``; returns the exit code (0 ok, 2 usage error)."""
    import os

    from .._checks import check_int
    from .._text import safe_text
    from ..experiments._cells import load_data
    from ..experiments._runner import default_cache_dir, estimate_seconds
    from ..experiments.trainability import RunOptions, pending, run_spec
    from ..report.run_view import fold_tokens
    from ._common import console, print_json, save_figure
    from .phase import check_figure_path

    owner = "gradhealth trainability"
    out = check_figure_path(args.out, "out", owner)
    spec = _spec(args)
    jobs = args.jobs if args.jobs is not None else min(os.cpu_count() or 1, 8)
    jobs = check_int(jobs, "jobs", owner, min_value=1, max_value=256, fix="pass e.g. --jobs 2.")
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    if cache is not None and os.path.exists(cache) and not os.path.isdir(cache):
        from ..errors import ParameterError

        raise ParameterError("cache", owner, "a directory (created when missing)", str(cache),
                             "pass --cache a folder, or --no-cache.")
    con = console(stderr=args.json)
    todo, _ = pending(spec, RunOptions(cache_dir=cache))
    total = len(spec.cells())
    eta = estimate_seconds(spec, todo, load_data(spec.data), jobs=jobs)

    def fold(line: str) -> str:   # at the terminal's width, between words (never inside a number)
        return fold_tokens(line, max(40, con.width or 80))

    con.print(fold(f"{total} cells ({total - len(todo)} cached), {len(spec.depths)} depths x {len(spec.sigma_w2)} "
                   f"sigma_w2, {spec.steps} steps each: about {eta:.0f} s on {min(jobs, max(len(todo), 1))} "
                   f"process(es)"), markup=False, soft_wrap=True)
    result = _run_with_bar(spec, RunOptions(jobs=jobs, cache_dir=cache), len(todo), total,
                           progress=not args.no_progress, con=con, run_spec=run_spec)
    save_figure(result.plot, out, owner)
    if args.json:
        print_json({"out": str(out), "estimate_seconds": eta, **result.to_dict()})
        return 0
    for line in result.summary().splitlines():
        con.print(fold(safe_text(line)), markup=False, soft_wrap=True)
    con.print(fold(f"wrote {safe_text(out)}"), markup=False, soft_wrap=True)
    return 0


def _run_with_bar(spec, options, todo: int, total: int, *, progress: bool, con, run_spec):
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("training cells"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=con, disable=not progress or not todo,
                  transient=False) as bar:
        task = bar.add_task("cells", total=total, completed=total - todo)
        return run_spec(spec, replace(options, on_cell=lambda done, n, rec: bar.update(task, completed=done)))

