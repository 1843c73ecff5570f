"""Experiments that put the theory to work on real training (torch).

- :func:`trainability` — train a plain fully connected net over a ``sigma_w2 x depth`` grid and
  compare the trainable region with ``depth < k xi_c`` (Schoenholz et al. 2017);
- :func:`trainability_of` — the same for a user's model family ``factory(depth, scale)``, on the
  probe's measured gain per layer;
- :class:`TrainabilityResult` — the grid, the theory, the fitted ``k``; ``plot``, ``to_dict``,
  ``from_dict``.

Layer: above ``probe`` (it measures the gain at init with it), below ``report``.
"""

from ._spec import TrainabilitySpec
from .result import TrainabilityResult
from .trainability import RunOptions, run_spec, trainability, trainability_of

__all__ = ["trainability", "trainability_of", "TrainabilityResult", "TrainabilitySpec", "RunOptions",
           "run_spec"]
