"""Small validators shared by every public entry point (internal).

Each raises :class:`~gradhealth.errors.ParameterError` naming the parameter, the rule,
the value and a fix. No ``assert`` on user input anywhere in gradhealth.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from .errors import ParameterError


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(value: Any, name: str, owner: str, *, min_value: int | None = None,
              max_value: int | None = None, fix: str | None = None) -> int:
    """Return ``value`` as int if it is an integer within [min_value, max_value]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        value = int(value)
        ok = (min_value is None or value >= min_value) and (max_value is None or value <= max_value)
    if not ok:
        if min_value is not None and max_value is not None:
            rule = f"an integer in [{min_value}, {max_value}]"
        elif min_value is not None:
            rule = f"an integer >= {min_value}"
        elif max_value is not None:
            rule = f"an integer <= {max_value}"
        else:
            rule = "an integer"
        if fix is None:
            fix = _int_fix(value, name, min_value, max_value)
        raise ParameterError(name, owner, rule, value, fix)
    return value


def _int_fix(value: Any, name: str, min_value: int | None, max_value: int | None) -> str | None:
    """A fix that fits the rule: the bound the value broke (the nearest allowed integer)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if max_value is not None and int(value) > max_value:
            return f"pass {name}={max_value} or smaller."
        if min_value is not None and int(value) < min_value:
            return f"pass {name}={min_value} or larger."
    if min_value is not None and max_value is not None:
        return f"pass an integer {name} between {min_value} and {max_value}."
    if min_value is not None:
        return f"pass {name}={min_value} or larger."
    if max_value is not None:
        return f"pass {name}={max_value} or smaller."
    return None


def check_real(value: Any, name: str, owner: str, *, low: float | None = None,
               high: float | None = None, low_inclusive: bool = True,
               high_inclusive: bool = True, fix: str | None = None) -> float:
    """Return ``value`` as float if it is a finite real number inside the given interval."""
    try:
        ok = _is_real(value) and math.isfinite(float(value))
    except OverflowError:   # an integer beyond float's range (10**400)
        ok = False
    if ok:
        v = float(value)
        if low is not None:
            ok = v >= low if low_inclusive else v > low
        if ok and high is not None:
            ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "-inf" if low is None else repr(float(low))
        hi = "inf" if high is None else repr(float(high))
        lb = "[" if (low is not None and low_inclusive) else "("
        hb = "]" if (high is not None and high_inclusive) else ")"
        if low is None and high is None:
            rule = "a finite real number"
        else:
            rule = f"a finite real number in {lb}{lo}, {hi}{hb}"
        raise ParameterError(name, owner, rule, value, fix)
    return float(value)


def check_choice(value: Any, name: str, owner: str, choices: Iterable[str],
                 fix: str | None = None) -> str:
    """Return ``value`` if it is one of ``choices`` (case-sensitive strings)."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        rule = "one of " + ", ".join(repr(c) for c in choices)
        raise ParameterError(name, owner, rule, value,
                             fix or f"pass {name}={choices[0]!r} (or another listed value).")
    return value
