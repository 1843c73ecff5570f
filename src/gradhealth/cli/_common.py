"""Helpers shared by the subcommands (internal)."""

from __future__ import annotations

import json
import sys

from ..errors import ParameterError
from ..events import jsonable


def console(stderr: bool = False):
    """A rich Console; plain text when not a terminal (CI logs stay readable)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(obj) -> None:
    """Print ``obj`` as JSON; NaN/Inf become strings so nothing is dropped."""
    json.dump(jsonable(obj), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def save_figure(draw, out, owner: str) -> None:
    """Draw with ``draw()`` (it returns the Axes) on the Agg backend and save the figure to
    ``out``; a path that cannot be written is a ParameterError on ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = draw()
    try:
        ax.figure.savefig(out, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise ParameterError("out", owner, "a writable figure file", str(out),
                             f"choose another path ({exc}).") from None
    finally:
        plt.close(ax.figure)


def float_pair(text: str, name: str, owner: str) -> tuple[float, float]:
    """Parse ``"A B"`` / ``"A,B"`` into two floats (used for ranges)."""
    parts = text.replace(",", " ").split()
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise ParameterError(name, owner, "two numbers", text, f"pass e.g. --{name} -1 1") from None
    return a, b


def _library_dirs() -> tuple[str, ...]:
    """Directories whose frames are not the user's code: gradhealth, the standard library and
    the installed packages."""
    import os
    import sysconfig
    from pathlib import Path

    dirs = {str(Path(__file__).resolve().parents[1])}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(str(Path(path).resolve()))
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


def is_gradhealth_file(filename: str) -> bool:
    """True for a file of the gradhealth package (or of runpy: the frames of ``gradhealth run``)."""
    import os
    import runpy
    from pathlib import Path

    if filename in (runpy.__file__, "<frozen runpy>"):
        return True
    ours = str(Path(__file__).resolve().parents[1]) + os.sep
    return os.path.abspath(filename).startswith(ours)


def user_location(exc: BaseException) -> str | None:
    """``"FILE:LINE"`` of the last frame of ``exc``'s traceback in the user's own code (not
    gradhealth, not the standard library, not an installed package; the first frame outside
    gradhealth when every frame is in a library); a SyntaxError's own file and line."""
    import os
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_gradhealth_file(f.filename)]
    libs = _library_dirs()
    mine = [f for f in frames if not f.filename.startswith("<")
            and not os.path.abspath(f.filename).startswith(libs)]
    frame = mine[-1] if mine else (frames[0] if frames else None)
    return f"{frame.filename}:{frame.lineno}" if frame else None


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception."""
    text = str(exc).strip().splitlines()
    if isinstance(exc, SyntaxError) and exc.msg:
        text = [exc.msg]
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


SEED_MAX = 2 ** 63 - 1


def seed_int(text: str) -> int:
    """argparse ``type`` of ``--seed``: an integer torch.manual_seed takes (0 .. 2**63 - 1);
    argparse turns the error into a usage message with exit code 2."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}; pass e.g. --seed 0") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{SEED_MAX}, got {text}; pass e.g. --seed 0")
    return v



def check_finite_options(args, names: tuple[str, ...], owner: str) -> None:
    """ParameterError naming the CLI option (``--weight``, not the library function the value
    goes to) for each of ``names`` (attribute names of ``args``; a list is checked item by
    item) that is not a finite number."""
    from .._checks import check_real

    for name in names:
        value = getattr(args, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        opt = name.replace("_", "-")
        for v in values:
            if v is not None:
                check_real(v, opt, owner, fix=f"pass e.g. --{opt} 0.9 (negative numbers too: --{opt} -1e-3).")
