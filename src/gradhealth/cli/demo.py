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


def run(args) -> int:
    """Run ``gradhealth demo`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..gallery import build

    res = build(args.out, sections=args.only, progress=not args.no_progress)
    print(f"wrote {len(res.files)} figures to {res.out_dir}/ — open {res.index_html} "
          f"(or read {res.index_md})")
    return 0
