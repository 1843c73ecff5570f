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


def float_pair(text: str, name: str, owner: str) -> tuple[float, float]:
    """Parse ``"A B"`` / ``"A,B"`` into two floats (used for ranges)."""
    parts = text.replace(",", " ").split()
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise ParameterError(name, owner, "two numbers", text, f"pass e.g. --{name} -1 1") from None
    return a, b
