"""``gradhealth events``: the events of a finished or running run, as a table or JSON."""

from __future__ import annotations

HELP = "list the events (what went wrong, where, since when, what to change) of a run"
DESCRIPTION = """List the events of the run in RUN_DIR (finished, crashed, or still training).

Exit code: 1 if any listed event is a pathology (severity warning or worse), 0 if none,
2 if RUN_DIR is missing or is not a readable gradhealth run.

Examples:
  gradhealth events runs/exp1
  gradhealth events runs/exp1 --kind nonfinite --layer 'encoder.*' --json
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth events`` to its subparser."""
    from ..events import KINDS

    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds run.sqlite)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per event)")
    parser.add_argument("--kind", action="append", metavar="KIND",
                        choices=[k for k in KINDS if k != "healthy"],
                        help="only events of this kind (repeatable): "
                             + ", ".join(k for k in KINDS if k != "healthy"))
    parser.add_argument("--layer", metavar="PATTERN",
                        help="only events of layers matching PATTERN (a glob such as "
                             "'encoder.*'; without wildcards: any name containing it)")


def layer_matcher(pattern: str | None):
    """A predicate on layer names: glob when ``pattern`` has wildcards, else substring."""
    import fnmatch

    if pattern is None:
        return lambda name: True
    if any(c in pattern for c in "*?["):
        return lambda name: name is not None and fnmatch.fnmatchcase(name, pattern)
    return lambda name: name is not None and pattern in name


def run(args) -> int:
    """Run ``gradhealth events`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..report.run_view import EventsTable, is_pathology
    from ..store import load_run
    from . import EXIT_OK, EXIT_PATHOLOGY
    from ._common import console, print_json

    run_ = load_run(args.run_dir, layer_stats=False)
    match = layer_matcher(args.layer)
    events = [e for e in run_.events
              if (not args.kind or e.kind in args.kind) and match(e.layer)]
    if args.json:
        print_json([e.to_dict() for e in events])
    else:
        out = console()
        filt = []
        if args.kind:
            filt.append("kind " + "/".join(args.kind))
        if args.layer:
            filt.append(f"layer {args.layer}")
        if events:
            from rich.text import Text

            title = Text(f"{len(events)} event(s) in ")
            title.append(str(run_.run_dir))
            if filt:
                title.append(" (" + ", ".join(filt) + ")")
            out.print(title)
            out.print(EventsTable(events))
        else:
            from rich.text import Text

            msg = Text("no events" + (" matching " + ", ".join(filt) if filt else "") + " in ")
            msg.append(str(run_.run_dir))
            out.print(msg)
    return EXIT_PATHOLOGY if any(is_pathology(e) for e in events) else EXIT_OK
