"""What an initialiser did: :class:`InitSummary` (one :class:`LayerInit` per changed layer),
and the small parameter helpers every initialiser, LSUV and residual zeroing share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["InitSummary", "LayerInit"]


@dataclass
class LayerInit:
    """What one ``*_`` initialiser did to one layer.

    Attributes:
        layer: qualified module name (``"encoder.0"``).
        module: module class name (``"Linear"``).
        activation: the activation the scale was matched to (``"tanh"``), or ``""`` when the
            scheme does not depend on it.
        source: how that activation was found (see the module docstring).
        scheme: what was drawn, with numbers, e.g. ``"N(0, 1.76/fan_in), fan_in=64"``.
        params: the parameter names that were written.
        std_before, std_after: standard deviation of the (first) weight before and after.
    """

    layer: str
    module: str
    activation: str
    source: str
    scheme: str
    params: list[str]
    std_before: float
    std_after: float


@dataclass
class InitSummary:
    """The report returned by every initialiser: what changed, and what could not be matched.

    Attributes:
        function: the initialiser that produced it (``"critical_"``).
        changed: one :class:`LayerInit` per re-initialised layer, in module order.
        unmatched: ``(layer, reason)`` for every targeted layer left unchanged.
    """

    function: str
    changed: list[LayerInit] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changed)

    def to_dict(self) -> dict:
        return {"function": self.function, "changed": [asdict(c) for c in self.changed],
                "unmatched": [list(u) for u in self.unmatched]}

    def __str__(self) -> str:
        rows = [("layer", "module", "activation", "source", "scheme", "std before -> after")]
        # Consecutive layers treated alike share one row ("2 .. 76 (38 layers)").
        groups: list[list[LayerInit]] = []
        for c in self.changed:
            key = (c.module, c.activation, c.source, c.scheme)
            if groups and (groups[-1][0].module, groups[-1][0].activation, groups[-1][0].source,
                           groups[-1][0].scheme) == key:
                groups[-1].append(c)
            else:
                groups.append([c])
        for grp in groups:
            c = grp[0]
            if len(grp) == 1:
                name, std = c.layer, f"{c.std_before:.4g} -> {c.std_after:.4g}"
            else:
                b = [g.std_before for g in grp]
                a = [g.std_after for g in grp]
                name = f"{c.layer} .. {grp[-1].layer} ({len(grp)} layers)"
                std = f"{min(b):.3g}..{max(b):.3g} -> {min(a):.3g}..{max(a):.3g}"
            rows.append((name, c.module, c.activation or "-", c.source, c.scheme, std))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.function}: {len(self.changed)} layer(s) re-initialised"]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        for name, why in self.unmatched:
            lines.append(f"  not changed: {name}: {why}")
        return "\n".join(lines)

    __repr__ = __str__


def _weights(m: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """(param name, tensor, number of gate blocks) for the weights of a layer."""
    if isinstance(m, nn.RNNBase):
        gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
        return [(n, getattr(m, n), 1 if n.startswith("weight_hr") else gates)
                for n in m._flat_weights_names if n.startswith("weight")]
    return [("weight", m.weight, 1)] if getattr(m, "weight", None) is not None else []


def _biases(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if isinstance(m, nn.RNNBase):
        return [(n, getattr(m, n)) for n in m._flat_weights_names if n.startswith("bias")]
    b = getattr(m, "bias", None)
    return [("bias", b)] if isinstance(b, torch.Tensor) else []


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std()) if t.numel() > 1 else float(t.detach().float().abs().sum())

