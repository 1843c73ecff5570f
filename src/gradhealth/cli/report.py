"""``gradhealth report``: one self-contained HTML page (or PNG/SVG) of a run or a probe."""

from __future__ import annotations

HELP = "write the report of a run directory or a probe JSON: one offline HTML page (or PNG/SVG)"
DESCRIPTION = """Write the report of SOURCE: a run directory (gradhealth.watch(..., run_dir=...) or
`gradhealth run --run-dir`), its run.sqlite, or the JSON of `gradhealth probe --json`.

The HTML file is self-contained: images inline, no network request, no JavaScript. Its first
screen says what went wrong, where and since when, and what to change.

Exit code: 0 healthy, 1 a pathology was found, 2 SOURCE is missing, empty or unreadable
(a partial report is still written when part of it could be read), or --out is not a file
in an existing directory, or its suffix names another format than --format.

Examples:
  gradhealth report runs/exp1 --out exp1.html
  gradhealth probe mypkg.models:build --json > probe.json && gradhealth report probe.json
  gradhealth report runs/exp1 --out exp1.png --format png
"""

FORMATS = ("html", "png", "svg")
#: --out suffixes that name one of FORMATS.
_SUFFIX_FORMAT = {"html": "html", "htm": "html", "png": "png", "svg": "svg"}
#: --out suffixes of formats the report is not written in (HTML or PNG bytes under such a
#: name would be a file no viewer opens).
_OTHER_FORMATS = ("pdf", "jpg", "jpeg", "gif", "webp", "tif", "tiff", "bmp", "eps", "ps", "svgz")
_OWNER = "gradhealth report"


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_OR_PROBE_JSON",
                        help="a run directory (or its run.sqlite), or a probe result JSON file")
    parser.add_argument("--out", "-o", metavar="PATH",
                        help="where to write it, in an existing directory (default: report.html, or "
                             "report.<format>)")
    parser.add_argument("--format", choices=FORMATS,
                        help="html (default, or from the --out suffix), png or svg; must agree with the "
                             "--out suffix")


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


def output(out: str | None, fmt: str | None, source: str):
    """``(path, format)`` of ``--out`` / ``--format``, checked: the --out suffix and --format
    agree, the suffix is not another format's, the file is in an existing directory (as for
    ``probe --plot``, ``chain --plot`` and ``phase --out``) and is not SOURCE itself."""
    import os
    from pathlib import Path

    from .._text import safe_text
    from ..errors import ParameterError

    named_path = Path(out or "report")
    suffix = named_path.suffix.lower().lstrip(".")
    named = _SUFFIX_FORMAT.get(suffix)
    if suffix in _OTHER_FORMATS:
        raise ParameterError("out", _OWNER, "a file name ending in .html, .png or .svg (the formats "
                             "the report is written in)", out,
                             f"pass e.g. --out {safe_text(named_path.with_suffix('.html'))}.")
    if fmt is not None and named is not None and named != fmt:
        raise ParameterError("format", _OWNER, f"the format the --out suffix .{suffix} names ({named}), "
                             "or left out", fmt, f"leave --format out, or pass --out "
                             f"{safe_text(named_path.with_suffix('.' + fmt))}.")
    fmt = fmt or named or "html"
    p = Path(out) if out else Path(f"report.{fmt}")
    if p.is_dir():
        raise ParameterError("out", _OWNER, "a file path, not a directory", str(p),
                             f"pass e.g. --out {safe_text(p / ('report.' + fmt))}.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ParameterError("out", _OWNER, "a file in an existing directory", str(p),
                             f"create {safe_text(parent)}/ first, or choose another path.")
    if p.exists() and Path(source).exists() and os.path.samefile(p, source):
        raise ParameterError("out", _OWNER, "another file than the source it reports on", str(p),
                             f"pass e.g. --out {safe_text(p.with_suffix('.report.' + fmt))}.")
    return p, fmt


def run(args) -> int:
    import sys

    from ..report.html import visible
    from . import EXIT_OK, EXIT_PATHOLOGY, EXIT_USAGE

    out, fmt = output(args.out, args.format, args.source)
    report = build(args.source)
    prog = _OWNER
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
