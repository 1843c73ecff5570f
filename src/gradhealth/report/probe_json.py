"""A probe result back from JSON: the inverse of ``ProbeResult.to_dict()`` / ``to_json()``
(``"nan"``/``"inf"`` strings become floats again; unknown keys are ignored)."""

from __future__ import annotations

import json
import math

from ..events import Event, Prescription

__all__ = ["probe_from_dict", "load_probe"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _num(x):
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    if isinstance(x, list):
        return tuple(_num(v) for v in x)
    if isinstance(x, dict):
        return {k: _num(v) for k, v in x.items()}
    return x


def _build(cls, d: dict | None, **over):
    from dataclasses import fields

    if d is None:
        return None
    names = {f.name for f in fields(cls)}
    kw = {k: _num(v) for k, v in d.items() if k in names}
    kw.update(over)
    return cls(**kw)


def probe_from_dict(d: dict):
    """A :class:`~gradhealth.probe.ProbeResult` back from its ``to_dict()`` / JSON form
    (``"nan"``/``"inf"`` strings become floats again; unknown keys are ignored)."""
    from ..probe import result as R

    layers = tuple(_build(R.LayerReport, lr, evidence=_num(lr.get("evidence") or {}))
                   for lr in d.get("layers", []))
    res = d.get("residual")
    residual = None if res is None else _build(
        R.ResidualSummary, res, blocks=tuple(_build(R.ResidualBlock, b) for b in res.get("blocks", [])))
    return R.ProbeResult(
        verdict=d["verdict"], worst_layer=d.get("worst_layer"), layers=layers,
        findings=tuple(_build(Event, e, evidence=_num(e.get("evidence") or {})) for e in d.get("findings", [])),
        prescriptions=tuple(_build(Prescription, p) for p in d.get("prescriptions", [])),
        jacobian=_build(R.JacobianSpectrum, d.get("jacobian")), residual=residual,
        recurrent=tuple(_build(R.TimeSeries, t) for t in d.get("recurrent", [])),
        meanfield=_build(R.MeanFieldCheck, d.get("meanfield")), loss=_num(d.get("loss") or {}),
        settings=d.get("settings") or {}, notes=tuple(d.get("notes") or ()))


def load_probe(path):
    """Read the JSON of ``gradhealth probe --json`` (or ``ProbeResult.to_json()``)."""
    with open(path, encoding="utf-8") as fh:
        return probe_from_dict(json.load(fh))
