"""The cure pillar: remedies for vanishing and exploding gradients.

* guards: :func:`skip_nonfinite` (skip a step whose gradients are NaN/Inf).
"""

from .guards import StepGuard, nonfinite_grads, skip_nonfinite

__all__ = ["StepGuard", "nonfinite_grads", "skip_nonfinite"]
