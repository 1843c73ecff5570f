"""gradhealth: see, detect, diagnose and cure vanishing and exploding gradients.

Pillars: :mod:`gradhealth.theory` (explain), :func:`gradhealth.probe` (probe),
:func:`gradhealth.watch` (watch), :mod:`gradhealth.remedies` (cure).
"""

from .errors import GradHealthError, ModelError, NonFiniteError, ParameterError, StoreError
from .events import Event, Prescription

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Event",
    "Prescription",
    "GradHealthError",
    "ModelError",
    "NonFiniteError",
    "ParameterError",
    "StoreError",
]
