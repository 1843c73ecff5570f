"""gradhealth: see, detect, diagnose and cure vanishing and exploding gradients.

The four pillars::

    gradhealth.theory                      # explain: chains, mean field, criticality (NumPy only)
    gradhealth.probe(model, inputs)        # probe: one batch -> per-layer verdicts + prescriptions
    with gradhealth.watch(model, opt): ... # watch: cheap per-step statistics, detectors, guard
    gradhealth.remedies                    # cure: initialisers, clipping, guards

``import gradhealth`` does not import torch (so the theory works without it, and the CLI
starts fast); the torch-based entry points load on first use.
"""

from __future__ import annotations

import importlib
import sys
import types

from .errors import GradHealthError, ModelError, NonFiniteError, ParameterError, StoreError
from .events import Event, Prescription

# name -> (submodule, attribute or None for the submodule itself)
_LAZY = {
    "probe": ("probe", "probe"),
    "ProbeResult": ("probe", "ProbeResult"),
    "watch": ("watch", "watch"),
    "Watcher": ("watch", "Watcher"),
    "load_run": ("store", "load_run"),
    "Run": ("store", "Run"),
    "remedies": ("remedies", None),
    "theory": ("theory", None),
    "store": ("store", None),
}

__all__ = [
    "__version__",
    "probe",
    "ProbeResult",
    "watch",
    "Watcher",
    "load_run",
    "Run",
    "remedies",
    "theory",
    "Event",
    "Prescription",
    "GradHealthError",
    "ModelError",
    "NonFiniteError",
    "ParameterError",
    "StoreError",
]


def _installed_version() -> str:
    """The version of the installed distribution (one source: pyproject.toml), or
    ``"0+unknown"`` for a source tree that was never installed (no distribution metadata)."""
    import importlib.metadata  # not at import time: it costs as much as the rest of the package

    try:
        return importlib.metadata.version("gradhealth")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        value = globals()[name] = _installed_version()
        return value
    if name not in _LAZY:
        raise AttributeError(f"module 'gradhealth' has no attribute {name!r}")
    modname, attr = _LAZY[name]
    mod = importlib.import_module(f".{modname}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


class _Package(types.ModuleType):
    """Keeps ``gradhealth.probe`` and ``gradhealth.watch`` the *functions*.

    The import system binds every loaded submodule as an attribute of its package, so
    ``from gradhealth.probe import ProbeResult`` would otherwise replace the function
    ``gradhealth.probe`` by the subpackage of the same name. ``from gradhealth.probe import X``
    keeps working (it reads ``sys.modules``).
    """

    def __setattr__(self, name, value):
        if name in ("probe", "watch") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
