"""Exceptions raised by gradhealth.

Every error a user can cause names the parameter, the rule, the value given and the fix,
in the style of scikit-learn's parameter validation::

    The 'depth' parameter of scalar_chain must be an integer >= 1. Got 0.
    Fix: pass depth=1 or larger.
"""

from __future__ import annotations

__all__ = [
    "GradHealthError",
    "ParameterError",
    "ModelError",
    "NonFiniteError",
    "StoreError",
]


class GradHealthError(Exception):
    """Base class of every exception gradhealth raises on purpose."""


class ParameterError(GradHealthError, ValueError):
    """A parameter given by the user breaks its documented rule.

    Subclasses ``ValueError`` so that ``except ValueError`` in user code keeps working.
    """

    def __init__(self, param: str, owner: str, rule: str, got: object, fix: str | None = None):
        self.param, self.owner, self.rule, self.got, self.fix = param, owner, rule, got, fix
        msg = f"The {param!r} parameter of {owner} must be {rule}. Got {got!r}."
        if fix:
            msg += f"\nFix: {fix}"
        super().__init__(msg)


class ModelError(GradHealthError):
    """The model (or its inputs) cannot be used as given: the message says why and what to do."""


class NonFiniteError(GradHealthError, FloatingPointError):
    """A NaN or Inf appeared where training cannot continue; carries the diagnosis.

    Attributes:
        diagnosis: whatever gradhealth found out (an Event, a replay report, or None).
    """

    def __init__(self, message: str, diagnosis: object = None):
        super().__init__(message)
        self.diagnosis = diagnosis


class StoreError(GradHealthError):
    """A run directory or run store cannot be read or written."""
