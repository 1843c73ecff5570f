"""``gradhealth summary``: the diagnosis of a finished or running run."""

from __future__ import annotations

HELP = "diagnose a run: first bad layer and step, counts per kind, worst layers, remedies"
DESCRIPTION = """Diagnose the run in RUN_DIR (finished, crashed, or still training): the first layer
and step that went wrong, how many events of each kind, the worst layers and what to change.

Exit code: 1 if the run shows a pathology, 0 if it is clean, 2 if RUN_DIR is missing or is
not a readable gradhealth run.

Examples:
  gradhealth summary runs/exp1
  gradhealth summary runs/exp1 --json | jq .first
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth summary`` to its subparser."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.sqlite)")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")


def run(args) -> int:
    """Run ``gradhealth summary`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..report.run_view import render_summary, summarize
    from ..store import load_run
    from . import EXIT_OK, EXIT_PATHOLOGY
    from ._common import console, print_json

    summary = summarize(load_run(args.run_dir, layer_stats=False))
    if args.json:
        print_json(summary)
    else:
        console().print(render_summary(summary))
    return EXIT_OK if summary["healthy"] else EXIT_PATHOLOGY
