"""Exporters of a stored :class:`~gradhealth.store.Run`: pandas DataFrames, JSON records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import jsonable

if TYPE_CHECKING:  # pragma: no cover
    from .reader import Run

__all__ = ["to_pandas", "to_records"]


def to_pandas(run: "Run") -> dict:
    """The run as ``{"meta", "layers", "steps", "layer_stats", "events"}`` DataFrames.

    ``meta`` has columns ``key``, ``value``; ``layer_stats`` gains ``layer_name``; ``events``
    keeps ``evidence`` as dicts. NaN stays NaN, a value never recorded is NaN / None too
    (pandas has one missing marker for floats).

    Raises:
        ImportError: pandas is not installed (with the command that installs it).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("Run.to_pandas needs pandas, which is not installed. "
                          "Fix: pip install 'gradhealth[pandas]' (or pip install pandas).") from None
    from .schema import LAYER_STAT_COLUMNS, STEP_COLUMNS

    def frame(rows, keys, cols):
        # Typed columns: float64 (missing -> NaN) and nullable Int64, never 'object'.
        df = pd.DataFrame(rows, columns=[*keys, *(c for c, _ in cols)])
        types = {k: "int64" for k in keys}
        types.update({c: ("float64" if kind == "real" else "Int64") for c, kind in cols})
        return df.astype(types)

    stats = frame(run.layer_stats, ("step", "layer"), LAYER_STAT_COLUMNS)
    stats.insert(2, "layer_name", stats["layer"].map(run.layer_names))
    return {
        "meta": pd.DataFrame(sorted(run.meta.items()), columns=["key", "value"]),
        "layers": pd.DataFrame(run.layers, columns=["index", "name", "type", "n_params"]),
        "steps": frame(run.steps, ("step",), STEP_COLUMNS),
        "layer_stats": stats,
        "events": pd.DataFrame([e.to_dict() | {"evidence": e.evidence} for e in run.events],
                               columns=["step", "kind", "layer", "severity", "message",
                                        "evidence", "remedy", "since"]),
    }


def to_records(run: "Run") -> dict:
    """The whole run as JSON-safe plain data (NaN/Inf as strings, as in ``Event.to_dict``)."""
    return jsonable({
        "run_dir": str(run.run_dir),
        "meta": run.meta,
        "layers": run.layers,
        "steps": run.steps,
        "layer_stats": run.layer_stats,
        "events": [e.to_dict() for e in run.events],
    })
