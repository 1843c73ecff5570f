"""The explain pillar: the textbook theory of vanishing and exploding gradients, in numbers.

Framework-free: this package imports NumPy and SciPy only (a test checks it imports with
torch unavailable).

- :mod:`.activations` — the nonlinearities and their exact derivatives.
- :mod:`.chain` — one-unit-per-layer chains, ``w**L`` tables, deep linear networks.
- :mod:`.meanfield` — length and correlation maps, ``q*``, ``c*``, ``chi_1``, depth scales.
- :mod:`.criticality` — the critical ``sigma_w2`` (``chi_1 = 1``), critical lines, phase diagrams.
- :mod:`.trainability` — the predicted trainable depth ``k * xi_c`` and the fit of ``k`` to measurements.
"""

from .activations import Activation, activation_names, get_activation
from .chain import (
    ChainResult,
    DeepLinearResult,
    bumps,
    crossing_depth,
    deep_linear,
    power_limits,
    power_table,
    scalar_chain,
    slope_bound,
    weight_claim,
)
from .criticality import PhaseDiagram, critical_line, critical_sigma_w2, phase_diagram
from .meanfield import MeanFieldResult, analyze, chi_1
from .trainability import DepthMultipleFit, DepthScaleCurve, depth_scale_curve, fit_depth_multiple

__all__ = [
    "Activation",
    "activation_names",
    "get_activation",
    "ChainResult",
    "DeepLinearResult",
    "bumps",
    "crossing_depth",
    "deep_linear",
    "power_limits",
    "power_table",
    "scalar_chain",
    "slope_bound",
    "weight_claim",
    "MeanFieldResult",
    "analyze",
    "chi_1",
    "PhaseDiagram",
    "critical_line",
    "critical_sigma_w2",
    "phase_diagram",
    "DepthScaleCurve",
    "DepthMultipleFit",
    "depth_scale_curve",
    "fit_depth_multiple",
]
