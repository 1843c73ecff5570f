"""The explain pillar: the textbook theory of vanishing and exploding gradients, in numbers.

Framework-free: this package imports NumPy and SciPy only (a test checks it imports with
torch unavailable).
"""

from .activations import Activation, activation_names, get_activation

__all__ = ["Activation", "activation_names", "get_activation"]
