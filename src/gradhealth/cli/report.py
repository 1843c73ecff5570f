"""``gradhealth report``: one self-contained HTML page (or PNG/SVG) of a run or a probe."""

from __future__ import annotations

HELP = "write the report of a run directory or a probe JSON: one offline HTML page (or PNG/SVG)"
DESCRIPTION = """Write the report of SOURCE: a run directory (gradhealth.watch(..., run_dir=...) or
`gradhealth run --run-dir`), its run.sqlite, or the JSON of `gradhealth probe --json`.

The HTML file is self-contained: images inline, no network request, no JavaScript. Its first
screen says what went wrong, where and since when, and what to change.

Exit code: 0 healthy, 1 a pathology was found, 2 SOURCE is missing, empty or unreadable
(a partial report is still written when part of it could be read).

Examples:
  gradhealth report runs/exp1 --out exp1.html
  gradhealth probe mypkg.models:build --json > probe.json && gradhealth report probe.json
  gradhealth report runs/exp1 --out exp1.png --format png
"""

FORMATS = ("html", "png", "svg")


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_OR_PROBE_JSON",
                        help="a run directory (or its run.sqlite), or a probe result JSON file")
    parser.add_argument("--out", "-o", metavar="PATH",
                        help="where to write it (default: report.html, or report.<format>)")
    parser.add_argument("--format", choices=FORMATS,
                        help="html (default, or from the --out suffix), png or svg")


def _is_probe_json(path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


def build(source: str):
    """The :class:`~gradhealth.report.Report` of ``source`` (never raises for bad input)."""
    from pathlib import Path

    from ..report.html import Report

    p = Path(source)
    if not p.exists():
        return Report.unreadable(source, f"{source!r} does not exist. Fix: pass a run directory "
                                 "(holding run.sqlite) or a probe result JSON file.")
    if _is_probe_json(p):
        return Report.from_probe(p)
    return Report.from_run(p)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..report.html import visible
    from . import EXIT_OK, EXIT_PATHOLOGY, EXIT_USAGE

    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
        fmt = suffix if suffix in FORMATS else "html"
    out = Path(args.out) if args.out else Path(f"report.{fmt}")
    report = build(args.source)
    prog = "gradhealth report"
    if report.kind == "unreadable":
        for p in report.problems:
            print(f"{prog}: error: {visible(p)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if fmt == "html":
            report.to_html(out)
        else:
            report.to_image(out, format=fmt)
    except OSError as exc:
        print(f"{prog}: error: cannot write {visible(str(out))!r} ({exc.strerror or exc}). Fix: "
              "pass --out a path in a writable directory.", file=sys.stderr)
        return EXIT_USAGE
    print(f"{visible(report.verdict)}: {visible(report.headline)}")
    for p in report.problems:
        print(f"note: {visible(p)}", file=sys.stderr)
    print(f"wrote {visible(str(out))}")
    if report.damaged:
        return EXIT_USAGE
    return EXIT_OK if report.healthy or report.verdict == "no data" else EXIT_PATHOLOGY
