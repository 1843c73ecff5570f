"""From measured numbers to verdicts, evidence and prescriptions (internal; no torch here).

Everything in this module works on plain floats already read back from the device, so the
verdict rules can be tested on hand-made numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_real
from ..events import Event
from .result import VERDICT_ORDER

__all__ = ["Thresholds", "theil_sen", "depth_finding", "DEFAULT_THRESHOLDS"]


@dataclass(frozen=True)
class Thresholds:
    """When the probe raises an alarm. The defaults are calibrated in ``docs/probe.md``.

    Attributes:
        ratio: vanishing/exploding over depth: the backward gain changes by at least this
            factor across the layers as a sustained trend. The trend is the Theil-Sen slope
            of ``log(gain)`` against layer position (the median of all pairwise slopes), so
            one large step (a global pooling, a head of a different width) does not count;
            an exponential trend does. Layers whose gain is this far from the trend line's
            value at the output end are flagged.
        jump: a single layer whose gain is at least this far from the layer nearest the
            output is flagged even without a trend.
        error_ratio: beyond this factor the severity is ``"error"`` instead of ``"warning"``.
        dead: fraction of dead units (relu family, 0 on the whole batch) that flags a layer.
        saturated: fraction of saturated entries (tanh/sigmoid family) that flags a layer.
    """

    ratio: float = 50.0
    jump: float = 1e4
    error_ratio: float = 1e6
    dead: float = 0.5
    saturated: float = 0.5

    def __post_init__(self):
        for name in ("ratio", "jump", "error_ratio"):
            check_real(getattr(self, name), name, "Thresholds", low=1.0, low_inclusive=False,
                       fix=f"pass {name} > 1 (a factor, e.g. {getattr(type(self), name)!r}).")
        for name in ("dead", "saturated"):
            check_real(getattr(self, name), name, "Thresholds", low=0.0, high=1.0,
                       low_inclusive=False, fix=f"pass a fraction in (0, 1], e.g. {getattr(type(self), name)!r}.")


DEFAULT_THRESHOLDS = Thresholds()


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def theil_sen(y: list[float], x: list[float] | None = None) -> float:
    """Median of pairwise slopes (robust to a few jumps); 0 for fewer than two points."""
    y = np.asarray(y, dtype=float)
    x = np.arange(len(y), dtype=float) if x is None else np.asarray(x, dtype=float)
    n = len(y)
    if n < 2:
        return 0.0
    i, j = np.triu_indices(n, k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    if not ok.any():
        return 0.0
    return float(np.median((y[j] - y[i])[ok] / dx[ok]))


@dataclass
class DepthFinding:
    """Vanishing/exploding analysis of one series of gains ordered input -> output."""

    kind: str                      # "exploding", "vanishing" or "healthy"
    ratios: list                   # gain / gain of the output-most measured position
    growth: float | None           # per-position growth towards the input (Theil-Sen)
    trend_total: float | None      # growth compounded over the span
    worst: int | None              # position of the worst layer
    worst_ratio: float | None      # its entry in ``ratios``
    ref: int | None                # position of the reference (nearest the output)
    flagged: list = field(default_factory=list)
    severity: str = "info"
    depth: int = 0


def depth_finding(gains: list[float | None], th: Thresholds = DEFAULT_THRESHOLDS) -> DepthFinding:
    """Decide vanishing / exploding for gains ordered from input to output (see Thresholds).

    ``None`` gains (not measured) are skipped; a gain of exactly 0 (the signal underflowed)
    is vanishing.
    """
    n = len(gains)
    pos = [i for i, g in enumerate(gains) if _finite(g)]
    posp = [i for i in pos if gains[i] > 0]
    ref = posp[-1] if posp else None
    if ref is None:
        return DepthFinding("healthy", [None] * n, None, None, None, None, None, depth=n)
    gref = gains[ref]
    ratios = [gains[i] / gref if i in pos else None for i in range(n)]
    logs = [math.log(gains[i]) for i in posp]
    slope = theil_sen(logs, posp)
    intercept = float(np.median([y - slope * x for x, y in zip(posp, logs)]))
    fit_ref = intercept + slope * posp[-1]
    growth = math.exp(-slope)  # towards the input
    span = (posp[-1] - posp[0]) if len(posp) > 1 else 0
    trend_total = math.exp(-slope * span)
    # distance of each layer from the trend line's value at the output end (log scale)
    dev = {i: (math.log(gains[i]) - fit_ref) if gains[i] > 0 else -math.inf for i in pos}
    rmax = max(r for r in ratios if r is not None)
    rmin = min(r for r in ratios if r is not None)
    underflow = any(gains[i] == 0 for i in pos)
    lr = math.log(th.ratio)
    exploding_trend = trend_total >= th.ratio
    vanishing_trend = trend_total <= 1.0 / th.ratio or underflow
    exploding = exploding_trend or rmax >= th.jump
    vanishing = vanishing_trend or rmin <= 1.0 / th.jump
    if exploding and vanishing:  # keep the stronger of the two
        up = max(math.log(trend_total), math.log(rmax))
        down = -min(math.log(trend_total), math.log(max(rmin, 1e-300)))
        exploding, vanishing = up >= down, up < down
    if exploding:
        kind = "exploding"
        if exploding_trend:
            # A layer explodes when the trend grows by >= ratio between it and the output end AND
            # its own gain agrees. A layer near the output end (a head after a pooling step, whose
            # gain is ~1 like the output's) sits above the line by a jump, not by growth: not flagged.
            flagged = [i for i in pos if dev[i] >= lr and -slope * (posp[-1] - i) >= lr] or [posp[0]]
            worst = flagged[0]
        else:
            flagged = [i for i in pos if ratios[i] >= th.jump]
            worst = max(flagged, key=lambda i: ratios[i])
        sev = "error" if max(trend_total, rmax) >= th.error_ratio else "warning"
    elif vanishing:
        kind = "vanishing"
        if vanishing_trend:
            flagged = [i for i in pos if dev[i] <= -lr and (underflow or slope * (posp[-1] - i) >= lr)] or [pos[0]]
            worst = flagged[0]
        else:
            flagged = [i for i in pos if ratios[i] <= 1.0 / th.jump]
            worst = min(flagged, key=lambda i: ratios[i])
        sev = "error" if min(trend_total, rmin) <= 1.0 / th.error_ratio or underflow else "warning"
    else:
        kind, worst, flagged, sev = "healthy", None, [], "info"
    return DepthFinding(kind, ratios, growth, trend_total, worst,
                        ratios[worst] if worst is not None else None, ref, flagged, sev, depth=len(pos))


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def overall(kinds: list[str]) -> str:
    for k in VERDICT_ORDER:
        if k in kinds:
            return k
    return "healthy"


def make_event(kind: str, layer: str | None, severity: str, message: str, evidence: dict) -> Event:
    return Event(step=None, kind=kind, layer=layer, severity=severity, message=message,
                 evidence=dict(evidence))


def depth_message(kind: str, f: DepthFinding, worst_name: str, ref_name: str, what: str = "layer") -> str:
    word = "grows" if kind == "exploding" else "shrinks"
    return (f"{kind}: the backward signal {word} x{_fmt(f.growth)} per {what} towards the input "
            f"(x{_fmt(f.trend_total)} over {f.depth} {what}s); at {worst_name} it is "
            f"{_fmt(f.worst_ratio)}x its size at {ref_name}")
