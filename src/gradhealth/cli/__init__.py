"""The ``gradhealth`` command line.

One module per subcommand, each exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Subcommand modules import heavy libraries (torch, matplotlib) inside
``run`` so that ``gradhealth --help`` stays fast.

Exit codes everywhere: 0 healthy/ok, 1 a pathology was found, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..errors import GradHealthError

__all__ = ["main", "COMMANDS", "EXIT_OK", "EXIT_PATHOLOGY", "EXIT_USAGE"]

EXIT_OK, EXIT_PATHOLOGY, EXIT_USAGE = 0, 1, 2

#: Subcommand name -> module under gradhealth.cli (the order is the order of ``--help``).
COMMANDS = {
    "demo": "demo",
    "env": "env",
    "probe": "probe",
    "cure": "cure",
    "chain": "chain",
    "power": "power",
    "run": "run",
    "events": "events",
    "summary": "summary",
    "report": "report",
    "top": "top",
    "export": "export",
    "meanfield": "meanfield",
    "phase": "phase",
    "trainability": "trainability",
}


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a hint, for every usage error; a negative number in
    scientific notation (``--weight -1e-1``, ``--x-range -1e3 1``) is a value, as ``-0.1`` is
    (argparse's own pattern knows only ``-1`` and ``-.5``: no option of ours looks like one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$")

    def error(self, message):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="gradhealth",
                     description="See, detect, diagnose and cure vanishing and exploding gradients.")
    parser.add_argument("--version", action="version", version=f"gradhealth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(f".{modname}", __name__)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of ``command`` (the top-level one when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradhealth`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports a subcommand's unknown arguments from the top-level parser, with the
        # top-level usage; the subcommand's own usage is the one that helps
        _subparser(parser, getattr(args, "command", None)).error(
            f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = args._run(args)
    except GradHealthError as exc:
        # A user mistake (bad parameter, unusable model, unreadable run): no traceback.
        print(f"gradhealth {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gradhealth power --json | head`: the reader left; not an error of ours or the user's.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
