"""Layer rows as columns: how the watcher hands ``layer_stats`` to the store (internal).

A watched step of a model with hundreds of layers would otherwise build, queue and encode a
``dict`` per layer (about 0.5 ms a step on a 129-layer MLP). A :class:`LayerBlock` carries
the rows of one or more steps as arrays, and :meth:`LayerBlock.encoded` turns them into
SQL parameters with a few NumPy calls, NaN mask included (see :mod:`gradhealth.store.schema`).
:meth:`LayerBlock.rows` gives the same rows as the dicts of
:meth:`~gradhealth.store.RunStore.append_layer_stats`, which stays the general entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .schema import LAYER_STAT_COLUMNS

__all__ = ["LayerBlock", "COLUMN_INDEX"]

#: Column name -> its position in :data:`~gradhealth.store.schema.LAYER_STAT_COLUMNS` (and in
#: a block's ``values``; the NaN mask's bit).
COLUMN_INDEX = {c: i for i, (c, _) in enumerate(LAYER_STAT_COLUMNS)}
_INT_COLS = [i for i, (_, kind) in enumerate(LAYER_STAT_COLUMNS) if kind == "int"]
_BITS = np.left_shift(1, np.arange(len(LAYER_STAT_COLUMNS), dtype=np.int64))


@dataclass(frozen=True)
class LayerBlock:
    """``layer_stats`` rows as columns.

    Attributes:
        step, layer: ``(k,)`` int64, the key of each row.
        values: ``(k, len(LAYER_STAT_COLUMNS))`` float64, in column order; a NaN where
            ``measured`` is True is a measured NaN (NULL and its mask bit in the store).
        measured: same shape, bool; False writes NULL.
        time_grad: row index -> the per-time-step gradient norms of that row's (recurrent)
            layer, for the ``time_grads`` table.
    """

    step: np.ndarray
    layer: np.ndarray
    values: np.ndarray
    measured: np.ndarray
    time_grad: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k, n = len(self.step), len(LAYER_STAT_COLUMNS)
        if (self.layer.shape != (k,) or self.values.shape != (k, n) or self.measured.shape != (k, n)
                or self.measured.dtype != bool):
            raise ValueError(f"LayerBlock: inconsistent shapes step {self.step.shape}, layer {self.layer.shape}, "
                             f"values {self.values.shape}, measured {self.measured.shape} ({self.measured.dtype})")

    def __len__(self) -> int:
        return len(self.step)

    @classmethod
    def concat(cls, blocks: Sequence[LayerBlock]) -> LayerBlock:
        """One block with the rows of ``blocks``, in order."""
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            n = len(LAYER_STAT_COLUMNS)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, n)), np.zeros((0, n), bool))
        tg: dict[int, np.ndarray] = {}
        off = 0
        for b in blocks:
            tg.update({off + r: v for r, v in b.time_grad.items()})
            off += len(b)
        return cls(np.concatenate([b.step for b in blocks]), np.concatenate([b.layer for b in blocks]),
                   np.concatenate([b.values for b in blocks]), np.concatenate([b.measured for b in blocks]), tg)

    def encoded(self) -> list[list]:
        """``[step, layer, *columns, nan_mask]`` per row, as SQL parameters: None where not
        measured or NaN, the NaN's bit in ``nan_mask``, integers in the integer columns."""
        v, m = self.values, self.measured
        nan = m & np.isnan(v)
        ok = m & ~nan
        out = np.empty((len(self), v.shape[1] + 3), dtype=object)
        out[:, 0] = self.step.astype(np.int64)
        out[:, 1] = self.layer.astype(np.int64)
        out[:, 2:-1] = v
        for j in _INT_COLS:
            out[:, 2 + j] = np.where(ok[:, j], v[:, j], 0).astype(np.int64)
        body = out[:, 2:-1]
        body[~ok] = None
        out[:, -1] = (nan * _BITS).sum(axis=1)
        return out.tolist()

    def rows(self) -> list[dict]:
        """The same rows as ``append_layer_stats`` dicts (every column present, None for
        NULL, a NaN for a measured NaN; ``time_grad`` on recurrent rows)."""
        out = []
        names = [c for c, _ in LAYER_STAT_COLUMNS]
        ints = {names[j] for j in _INT_COLS}
        for r in range(len(self)):
            row: dict = {"step": int(self.step[r]), "layer": int(self.layer[r])}
            for j, c in enumerate(names):
                x = self.values[r, j]
                row[c] = None if not self.measured[r, j] else (int(x) if c in ints and x == x else float(x))
            if r in self.time_grad:
                row["time_grad"] = self.time_grad[r]
            out.append(row)
        return out
