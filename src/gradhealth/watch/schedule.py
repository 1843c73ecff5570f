"""Which steps the watcher measures: every N steps, log-spaced steps, or a union of them.

A schedule is a predicate on the (0-based) step number, and schedules combine with ``|``::

    every(10) | log_spaced(until=1000)    # steps 0,1,2,4,8,...,512 and every 10th step

Step 0 is always in :func:`every` and :func:`log_spaced`, so the first step of a run is
always measured (the state at initialisation is the one most diagnoses need).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .._checks import check_int
from ..errors import ParameterError

__all__ = ["Schedule", "every", "log_spaced", "steps", "never", "as_schedule"]


class Schedule:
    """Base class: a predicate ``schedule(step) -> bool``; combine with ``|``."""

    def __call__(self, step: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __or__(self, other: "Schedule") -> "Schedule":
        return _Union((self, as_schedule(other, "other", "Schedule.__or__")))

    def first(self, n: int, limit: int = 10**7) -> list[int]:
        """The first ``n`` scheduled steps (searching up to ``limit``)."""
        out = []
        s = 0
        while len(out) < n and s < limit:
            if self(s):
                out.append(s)
            s += 1
        return out


@dataclass(frozen=True)
class _Every(Schedule):
    n: int
    start: int = 0

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0

    def __repr__(self) -> str:
        return f"every({self.n})" if not self.start else f"every({self.n}, start={self.start})"


@dataclass(frozen=True)
class _LogSpaced(Schedule):
    base: float = 2.0
    until: int | None = None

    def __call__(self, step: int) -> bool:
        if self.until is not None and step > self.until:
            return False
        if step <= 1:
            return True
        # step is scheduled when it is the floor of some power of base
        k = math.floor(math.log(step, self.base) + 1e-9)
        for kk in (k, k + 1):
            if math.floor(self.base ** kk + 1e-9) == step:
                return True
        return False

    def __repr__(self) -> str:
        return f"log_spaced(base={self.base}, until={self.until})"


@dataclass(frozen=True)
class _Steps(Schedule):
    members: frozenset

    def __call__(self, step: int) -> bool:
        return step in self.members

    def __repr__(self) -> str:
        return f"steps({sorted(self.members)[:8]}{'...' if len(self.members) > 8 else ''})"


@dataclass(frozen=True)
class _Never(Schedule):
    def __call__(self, step: int) -> bool:
        return False

    def __repr__(self) -> str:
        return "never()"


@dataclass(frozen=True)
class _Union(Schedule):
    parts: tuple

    def __call__(self, step: int) -> bool:
        return any(p(step) for p in self.parts)

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.parts)


@dataclass(frozen=True)
class _Callable(Schedule):
    fn: Callable[[int], bool]

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))


def every(n: int, start: int = 0) -> Schedule:
    """Steps ``start, start + n, start + 2n, ...``."""
    n = check_int(n, "n", "every", min_value=1)
    start = check_int(start, "start", "every", min_value=0, fix="pass start=0.")
    return _Every(n, start)


def log_spaced(base: float = 2.0, until: int | None = None) -> Schedule:
    """Steps 0, 1 and ``floor(base**k)`` for k = 1, 2, ... (up to ``until`` if given)."""
    if not (isinstance(base, (int, float)) and base > 1 and math.isfinite(base)):
        raise ParameterError("base", "log_spaced", "a finite number > 1", base, "pass base=2.")
    if until is not None:
        until = check_int(until, "until", "log_spaced", min_value=0)
    return _LogSpaced(float(base), until)


def steps(members: Iterable[int]) -> Schedule:
    """Exactly the given steps."""
    return _Steps(frozenset(int(m) for m in members))


def never() -> Schedule:
    """No step."""
    return _Never()


def as_schedule(value, name: str = "every", owner: str = "gradhealth.watch") -> Schedule:
    """Turn an int (every N), ``"log"`` (log-spaced), a Schedule or a callable into a Schedule."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise ParameterError(name, owner, "an integer >= 1, 'log', a Schedule or a callable", value,
                             f"pass {name}=1 (every step) or {name}=10.")
    if isinstance(value, numbers.Integral):   # (np.int64 too, as every other integer option)
        value = int(value)
        if value < 1:
            raise ParameterError(name, owner, "an integer >= 1, 'log', a Schedule or a callable", value,
                                 f"pass {name}=1 (every step) or {name}=10.")
        return _Every(value)
    if isinstance(value, str) and value == "log":
        return _LogSpaced()
    if callable(value):
        return _Callable(value)
    raise ParameterError(name, owner, "an integer >= 1, 'log', a Schedule or a callable", value,
                         f"pass {name}=1 (every step), {name}=10 or {name}='log'.")
