"""What a trainability experiment is: its grid and its training settings (plain data, no torch).

A :class:`TrainabilitySpec` is the experiment's identity: the cache key of a cell is the spec
without its grid plus the cell's ``(sigma_w2, depth)``, so enlarging a grid reuses the cells
already trained and changing any training setting trains afresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from .._checks import check_choice, check_int, check_real
from ..errors import ParameterError

__all__ = ["TrainabilitySpec", "DATASETS", "VARIANTS", "CELL_VERSION", "check_spec"]

DATASETS = ("digits", "blobs")
VARIANTS = ("plain", "residual", "layernorm", "factory")
#: Bumped whenever what a cell computes changes: old cache entries are then ignored.
CELL_VERSION = 1


@dataclass(frozen=True)
class TrainabilitySpec:
    """The grid and the training settings of one trainability experiment.

    Attributes:
        activation: activation name (``"tanh"``, ``"relu"``, ...); for a user's model family the
            factory's qualified name.
        sigma_w2: the x grid: weight variance times fan-in (for a factory, the init scale it is
            called with).
        depths: the depth grid (number of hidden layers; for a factory, what it is called with).
        sigma_b2: bias variance of the built-in nets.
        data: ``"digits"`` or ``"blobs"``.
        steps: SGD steps per cell.
        width: hidden width of the built-in nets.
        lr, momentum, batch_size: the SGD settings.
        seed: one seed for every cell (weights and minibatches: common random numbers).
        threshold: a cell is trainable when its final train accuracy is at least this.
        variant: ``"plain"``, ``"residual"``, ``"layernorm"``, or ``"factory"``.
        factory_key: for ``"factory"`` runs, what identifies the factory's code in the cache.
    """

    activation: str
    sigma_w2: tuple
    depths: tuple
    sigma_b2: float = 0.05
    data: str = "digits"
    steps: int = 300
    width: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 128
    seed: int = 0
    threshold: float = 0.5
    variant: str = "plain"
    factory_key: str = ""

    def cells(self) -> list[tuple[int, int]]:
        """``(depth index, sigma_w2 index)`` of every cell, cheapest (shallowest) first."""
        return [(i, j) for i in range(len(self.depths)) for j in range(len(self.sigma_w2))]

    def cell_key(self, sigma_w2: float, depth: int) -> str:
        """A stable hex key of one cell: the settings (not the grid) and the cell's coordinates."""
        settings = asdict(replace(self, sigma_w2=(), depths=()))
        blob = json.dumps({"v": CELL_VERSION, "settings": settings, "sigma_w2": float(sigma_w2),
                           "depth": int(depth)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def to_dict(self) -> dict:
        """Plain JSON types."""
        d = asdict(self)
        d["sigma_w2"], d["depths"] = list(self.sigma_w2), list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainabilitySpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["sigma_w2"] = tuple(float(v) for v in d["sigma_w2"])
        d["depths"] = tuple(int(v) for v in d["depths"])
        return cls(**d)


def _grid(values, name: str, owner: str, example: str, *, integer: bool) -> tuple:
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        arr = None
    kind = "integers >= 1" if integer else "finite numbers > 0"
    if arr is None or arr.ndim != 1 or arr.size == 0:
        raise ParameterError(name, owner, f"a non-empty 1-D list of {kind}", values, f"pass e.g. {example}.")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if integer:
        bad |= arr != np.round(arr)
    if bad.any():
        raise ParameterError(name, owner, f"a non-empty 1-D list of {kind}",
                             values if arr.size <= 12 else f"{arr.size} values, {int(bad.sum())} bad",
                             f"pass e.g. {example}.")
    if np.unique(arr).size != arr.size:
        raise ParameterError(name, owner, f"a list of distinct {kind}", values,
                             "remove the repeated values.")
    arr = np.sort(arr)
    return tuple(int(v) for v in arr) if integer else tuple(float(v) for v in arr)


def check_spec(spec: TrainabilitySpec, owner: str) -> TrainabilitySpec:
    """The spec with sorted grids, or ParameterError naming the first bad field."""
    w = _grid(spec.sigma_w2, "sigma_w2_grid", owner, "sigma_w2_grid=numpy.linspace(1, 4, 13)",
              integer=False)
    d = _grid(spec.depths, "depth_grid", owner, "depth_grid=[4, 8, 16, 32]", integer=True)
    check_real(spec.sigma_b2, "sigma_b2", owner, low=0.0, fix="pass a bias variance >= 0, e.g. 0.05.")
    check_choice(spec.data, "data", owner, DATASETS)
    check_int(spec.steps, "steps", owner, min_value=1, max_value=100_000)
    check_int(spec.width, "width", owner, min_value=1, max_value=4096)
    check_real(spec.lr, "lr", owner, low=0.0, low_inclusive=False, fix="pass e.g. lr=0.01.")
    check_real(spec.momentum, "momentum", owner, low=0.0, high=1.0, high_inclusive=False,
               fix="pass e.g. momentum=0.9 (0: plain SGD).")
    check_int(spec.batch_size, "batch_size", owner, min_value=1, max_value=100_000)
    check_int(spec.seed, "seed", owner, min_value=0)
    check_real(spec.threshold, "threshold", owner, low=0.0, high=1.0, low_inclusive=False,
               fix="pass a train accuracy in (0, 1], e.g. threshold=0.5 (chance on 10 classes: 0.1).")
    check_choice(spec.variant, "variant", owner, VARIANTS)
    if max(d) > 2000:
        raise ParameterError("depth_grid", owner, "depths <= 2000", max(d),
                             "a cell that deep takes hours on a CPU; pass smaller depths.")
    return replace(spec, sigma_w2=w, depths=d)
