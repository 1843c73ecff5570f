"""``gradhealth export``: a stored run to TensorBoard event files or an MLflow run."""

from __future__ import annotations

HELP = "export a run to TensorBoard or MLflow (per-layer scalars, histograms, NaN/Inf counts, events)"
DESCRIPTION = """Export the run in RUN_DIR (finished, crashed, or still training) to TensorBoard
event files or to an MLflow run: per-layer scalars, histograms of the finite values with the
NaN/+Inf/-Inf/zero counts as separate scalars, and the events as text.

Needs tensorboardX (pip install 'gradhealth[tensorboard]') or mlflow
(pip install 'gradhealth[mlflow]').

Exit code: 0 exported, 2 if RUN_DIR is not a readable run or the writer is not installed.

With --follow (TensorBoard only) the export keeps up with a run that is still training: the
store is read again every --interval seconds (from this process: the training is not touched)
and what is new is appended, until the run is finished or Ctrl-C.

Examples:
  gradhealth export runs/exp1 --to tensorboard --logdir tb/exp1
  gradhealth export runs/exp1 --to tensorboard --follow        # while it trains
  gradhealth export runs/exp1 --to mlflow --tracking-uri file:///tmp/mlruns --experiment mine
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth export`` to its subparser (imports neither torch nor a writer)."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.sqlite)")
    parser.add_argument("--to", required=True, choices=["tensorboard", "mlflow"], help="where to export")
    parser.add_argument("--logdir", metavar="DIR",
                        help="TensorBoard: the log directory to write (default: RUN_DIR/tensorboard)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow: the tracking URI, e.g. file:///tmp/mlruns (default: MLflow's own, "
                             "MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default="gradhealth", help="MLflow: the experiment name (default: gradhealth)")
    parser.add_argument("--run-name", metavar="NAME", help="MLflow: the run name (default: RUN_DIR's name)")
    parser.add_argument("--follow", action="store_true",
                        help="TensorBoard: keep exporting while the run trains, until it finishes (or Ctrl-C)")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="with --follow: seconds between reads of the store (default 2)")


def run(args) -> int:
    """Run ``gradhealth export`` on the parsed ``args``; returns the exit code (0 ok, 2 usage error)."""
    import os
    import sys
    from pathlib import Path

    from .._text import quoted, safe_text
    from ..integrations import export

    try:
        if args.to == "tensorboard":
            if args.tracking_uri or args.run_name:
                print("gradhealth export: error: --tracking-uri and --run-name are for --to mlflow.",
                      file=sys.stderr)
                return 2
            run_path = Path(args.run_dir)
            # (a run.sqlite given for the run: its folder holds the default logdir)
            logdir = args.logdir or (run_path.parent if run_path.is_file() else run_path) / "tensorboard"
            if args.follow:
                return _follow(export, args.run_dir, logdir, args.interval)
            logdir = export.to_tensorboard(args.run_dir, logdir)
            print(f"wrote TensorBoard event files to {safe_text(logdir)} "
                  f"(view: tensorboard --logdir {safe_text(logdir)})")
        else:
            if args.logdir or args.follow:
                print("gradhealth export: error: --logdir and --follow are for --to tensorboard.", file=sys.stderr)
                return 2
            run_id = export.to_mlflow(args.run_dir, tracking_uri=args.tracking_uri, experiment=args.experiment,
                                      run_name=args.run_name)
            print(f"logged MLflow run {safe_text(run_id)} in experiment {quoted(args.experiment)}")
    except ImportError as exc:
        print(f"gradhealth export: error: {safe_text(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not any(c.__name__ == "MlflowException" for c in type(exc).__mro__):   # e.g. a refused file store
            raise
        fix = ""
        uri = str(args.tracking_uri or "")
        if (uri.startswith("file:") or "file" in str(exc).lower()) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            fix = (" Fix: MLflow 3.7+ writes a local file: store only with MLFLOW_ALLOW_FILE_STORE=true "
                   "(run: MLFLOW_ALLOW_FILE_STORE=true gradhealth export ...), or pass --tracking-uri "
                   "of a tracking server.")
        print(f"gradhealth export: error: MLflow refused the export: {safe_text(exc)}{fix}", file=sys.stderr)
        return 2
    return 0


def _follow(export, run_dir, logdir, interval: float) -> int:
    """``--follow``: the live TensorBoard writer until the run finishes; Ctrl-C ends it cleanly."""
    import math

    from .._text import safe_text
    from ..errors import ParameterError

    if not (math.isfinite(interval) and interval > 0):
        raise ParameterError("interval", "gradhealth export", "a number of seconds > 0", interval,
                             "pass e.g. --interval 2 (how often the store is read again).")
    print(f"following {safe_text(run_dir)} into {safe_text(logdir)} (view: tensorboard --logdir "
          f"{safe_text(logdir)}); Ctrl-C to stop", flush=True)
    try:
        export.follow_tensorboard(run_dir, logdir, interval=interval)
    except KeyboardInterrupt:
        print("stopped; what was exported so far is kept")
        return 0
    print("the run finished; export complete")
    return 0
