"""``gradhealth demo``: the main job for a new user — writes the gallery."""

from __future__ import annotations

HELP = "write the gallery: every textbook picture, probe/watch/cure examples, with an index"
DESCRIPTION = """Write the gallery to OUT (default ./gallery): PNG figures plus index.md and index.html.

Example:
  gradhealth demo --out gallery && open gallery/index.html
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth demo`` to its subparser."""
    parser.add_argument("--out", default="gallery", help="output directory (default: gallery)")
    parser.add_argument("--only", action="append", metavar="SECTION",
                        help="build only this section (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true",
                        help="skip the HTML reports of the demo's runs (OUT/report/)")


def run(args) -> int:
    """Run ``gradhealth demo`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    import importlib.util

    from .._text import safe_text
    from ..errors import ParameterError
    from ..gallery import build

    if importlib.util.find_spec("sklearn") is None:   # the demo trains on scikit-learn's digits
        raise ParameterError("scikit-learn", "gradhealth demo", "installed (the demo's data set, digits)",
                             "not installed", "pip install 'gradhealth[demo]' (or pip install scikit-learn).")
    whole = args.only is None and not args.no_report
    res = build(args.out, sections=args.only, progress=not args.no_progress, reports=whole)
    print(f"wrote {len(res.files)} figures to {safe_text(res.out_dir)}/ — open {safe_text(res.index_html)}")
    if res.report_index is not None:
        print(f"start with the reports: {safe_text(res.report_index)}")
    return 0
