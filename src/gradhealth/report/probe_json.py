"""A probe result back from JSON: the inverse of ``ProbeResult.to_dict()`` / ``to_json()``
(``"nan"``/``"inf"`` strings become floats again; unknown keys are ignored).

What is read is checked against the shape ``to_dict()`` writes before anything is built from
it: a JSON object with a ``verdict`` (one of ``VERDICT_ORDER``) and a ``layers`` list of layer
objects; the optional parts, where present, of the types ``to_dict()`` gives them. Anything
else is a :class:`ProbeJSONError` that says which part is wrong, never an AttributeError deep
inside the report."""

from __future__ import annotations

import json
import math

from ..events import Event, Prescription

__all__ = ["probe_from_dict", "load_probe", "ProbeJSONError", "check_probe_dict"]

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


class ProbeJSONError(ValueError):
    """The data is not the ``to_dict()`` / JSON form of a probe result; the message says which
    part is wrong and what it should be."""


def _kind(x) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def _check_objects(items, where: str, cls) -> None:
    """``items`` is a list of objects, each with the fields ``cls`` cannot do without."""
    if not isinstance(items, list):
        raise ProbeJSONError(f"its {where} is {_kind(items)}, expected a list of objects")
    for i, item in enumerate(items):
        _check_object(item, f"{where}[{i}]", cls)


def _check_object(item, where: str, cls) -> None:
    """``item`` is an object with the fields ``cls`` cannot do without, and its dict fields
    (``evidence``) are objects or null."""
    from dataclasses import MISSING, fields

    if not isinstance(item, dict):
        raise ProbeJSONError(f"its {where} is {_kind(item)}, expected an object")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in item]
    if missing:
        raise ProbeJSONError(f"its {where} has no " + ", ".join(repr(k) for k in missing))
    for f in fields(cls):
        if f.default_factory is dict and item.get(f.name) is not None and not isinstance(item[f.name], dict):
            raise ProbeJSONError(f"its {where}.{f.name} is {_kind(item[f.name])}, expected an object")


def check_probe_dict(d) -> None:
    """Raise :class:`ProbeJSONError` unless ``d`` has the shape of ``ProbeResult.to_dict()``."""
    from ..probe import result as R

    if not isinstance(d, dict):
        raise ProbeJSONError(f"it is {_kind(d)}, expected a JSON object")
    for key in ("verdict", "layers"):
        if key not in d:
            raise ProbeJSONError(f"it has no {key!r}, which every saved probe result has")
    if d["verdict"] not in R.VERDICT_ORDER:
        shown = d["verdict"] if isinstance(d["verdict"], str) else _kind(d["verdict"])
        raise ProbeJSONError(f"its verdict is {shown[:40]!r}, expected one of {', '.join(R.VERDICT_ORDER)}")
    if d.get("worst_layer") is not None and not isinstance(d["worst_layer"], str):
        raise ProbeJSONError(f"its worst_layer is {_kind(d['worst_layer'])}, expected a string or null")
    _check_objects(d["layers"], "layers", R.LayerReport)
    for key, cls in (("findings", Event), ("prescriptions", Prescription), ("recurrent", R.TimeSeries)):
        if d.get(key) is not None:
            _check_objects(d[key], key, cls)
    for key in ("loss", "settings"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise ProbeJSONError(f"its {key} is {_kind(d[key])}, expected an object")
    if d.get("notes") is not None and not isinstance(d["notes"], list):
        raise ProbeJSONError(f"its notes is {_kind(d['notes'])}, expected a list")
    for key, one in (("jacobian", R.JacobianSpectrum), ("residual", R.ResidualSummary),
                     ("meanfield", R.MeanFieldCheck)):
        if d.get(key) is not None:
            _check_object(d[key], key, one)
    if d.get("residual") is not None:
        _check_objects(d["residual"]["blocks"], "residual.blocks", R.ResidualBlock)


def probe_from_dict(d: dict):
    """A :class:`~gradhealth.probe.ProbeResult` back from its ``to_dict()`` / JSON form
    (``"nan"``/``"inf"`` strings become floats again; unknown keys are ignored).

    Raises:
        ProbeJSONError: ``d`` does not have the shape ``to_dict()`` writes (the message says
            which part is wrong).
    """
    from ..probe import result as R

    check_probe_dict(d)
    layers = tuple(_build(R.LayerReport, lr, evidence=_num(lr.get("evidence") or {}))
                   for lr in d.get("layers", []))
    res = d.get("residual")
    residual = None if res is None else _build(
        R.ResidualSummary, res, blocks=tuple(_build(R.ResidualBlock, b) for b in res.get("blocks", [])))
    return R.ProbeResult(
        verdict=d["verdict"], worst_layer=d.get("worst_layer"), layers=layers,
        findings=tuple(_build(Event, e, evidence=_num(e.get("evidence") or {})) for e in d.get("findings") or []),
        prescriptions=tuple(_build(Prescription, p) for p in d.get("prescriptions") or []),
        jacobian=_build(R.JacobianSpectrum, d.get("jacobian")), residual=residual,
        recurrent=tuple(_build(R.TimeSeries, t) for t in d.get("recurrent") or []),
        meanfield=_build(R.MeanFieldCheck, d.get("meanfield")), loss=_num(d.get("loss") or {}),
        settings=d.get("settings") or {}, notes=tuple(d.get("notes") or ()))


def load_probe(path):
    """Read the JSON of ``gradhealth probe --json`` (or ``ProbeResult.to_json()``)."""
    with open(path, encoding="utf-8") as fh:
        return probe_from_dict(json.load(fh))
