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

__version__ = "0.1.0"

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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'gradhealth' has no attribute {name!r}")
    modname, attr = _LAZY[name]
    mod = importlib.import_module(f".{modname}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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
