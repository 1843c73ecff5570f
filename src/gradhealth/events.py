"""Diagnoses as data: :class:`Event` (what went wrong, where, since when) and
:class:`Prescription` (what to change).

The probe's verdicts and the watcher's detectors both speak in these kinds, so that one
prescription table (:mod:`gradhealth.remedies.prescribe`) serves both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Event", "Prescription", "KINDS", "SEVERITIES", "jsonable"]

#: Every diagnosis kind gradhealth emits. ``healthy`` is a verdict only, never an event.
KINDS = (
    "healthy",
    "vanishing",
    "exploding",
    "nonfinite",
    "dead_units",
    "saturated",
    "grad_spike",
    "loss_spike",
    "update_ratio",
    "divergence",   # the run diverges in its first steps, before any baseline exists
    "overflow",     # finite gradient entries whose norm overflows, or a non-finite optimizer state
    "guard",        # an action the guard took (skip, rollback, raise)
    "internal",     # gradhealth itself failed; training went on
)
SEVERITIES = ("info", "warning", "error", "critical")


def jsonable(x: Any) -> Any:
    """Convert ``x`` into something ``json.dumps`` accepts without losing NaN/Inf.

    Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no literal
    for them, and dropping them would hide exactly what gradhealth is for).
    """
    if isinstance(x, float) or (hasattr(x, "dtype") and getattr(x, "ndim", 1) == 0):
        try:
            v = float(x)
        except (TypeError, ValueError):
            return str(x)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if hasattr(x, "dtype") and "int" in str(x.dtype):
            return int(v)
        return v
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return jsonable(x.tolist())
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return x


@dataclass(frozen=True)
class Prescription:
    """One concrete change, ranked, with its reason in numbers.

    Attributes:
        rank: 1 is the change to try first.
        action: short imperative, e.g. ``"re-initialise Linear layers critically"``.
        code: the call or code change that applies it, e.g.
            ``"gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.05)"``.
        reason: why, with numbers, e.g. ``"chi_1 = 1.9 > 1: chaotic phase"``.
        kind: the diagnosis kind it answers (one of :data:`KINDS`).
    """

    rank: int
    action: str
    code: str
    reason: str
    kind: str = "healthy"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """Something a detector, the guard or the probe found.

    Attributes:
        step: optimizer step (0-based) at which it was seen; ``None`` for a probe.
        kind: one of :data:`KINDS`.
        layer: qualified module name (``"encoder.layers.3.linear1"``) or ``None`` for the model.
        severity: one of :data:`SEVERITIES`.
        message: one sentence for a person.
        evidence: the numbers behind it (JSON-safe after :func:`jsonable`).
        remedy: the top prescription's ``code`` or a short instruction; may be empty.
        since: first step at which the condition held, when known.
    """

    step: int | None
    kind: str
    layer: str | None
    severity: str
    message: str
    evidence: dict = field(default_factory=dict)
    remedy: str = ""
    since: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["evidence"] = jsonable(self.evidence)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
