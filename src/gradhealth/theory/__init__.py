"""The explain pillar: the textbook theory of vanishing and exploding gradients, in numbers.

Framework-free: this package imports NumPy and SciPy only (a test checks it imports with
torch unavailable).

- :mod:`.activations` — the nonlinearities and their exact derivatives.
- :mod:`.chain` — one-unit-per-layer chains, ``w**L`` tables, deep linear networks.
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
]
