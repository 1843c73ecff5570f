"""Zero-initialisation of residual branches (Goyal et al. 2017; Fixup, Zhang et al. 2019).

:func:`zero_init_residual_` finds the ``x + f(x)`` blocks of a model with ``torch.fx`` and
zeroes the last layer of each ``f``, so every block starts as the identity.
"""

from __future__ import annotations

import fnmatch
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError
from ._plan import _classify_node, _patterns
from ._summary import InitSummary, LayerInit, _std

__all__ = ["zero_init_residual_"]

_ZERO_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm,
               nn.GroupNorm)


def _residual_branch_ends(model: nn.Module) -> tuple[list[str] | None, str, list[tuple[str, str]]]:
    """Names of the modules that end a residual branch (``x + f(x)``), found with torch.fx,
    and ``(node, reason)`` for every branch whose last layer could not be identified."""
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:
        return None, f"the model cannot be traced with torch.fx ({type(exc).__name__})", []
    modules = dict(gm.named_modules())
    ancestors: dict[Any, set] = {}
    for node in gm.graph.nodes:  # topological order
        s = set()
        for a in node.all_input_nodes:
            s.add(a)
            s |= ancestors[a]
        ancestors[node] = s
    ends: list[str] = []
    missed: list[tuple[str, str]] = []
    adds = {operator.add, operator.iadd, torch.add}
    for node in gm.graph.nodes:
        is_add = (node.op == "call_function" and node.target in adds) or \
                 (node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        branch = b if a in ancestors[b] else (a if b in ancestors[a] else None)
        if branch is None:
            continue
        n = branch
        for _ in range(50):  # walk back through activations/dropout to the last parametrised op
            if n.op == "call_module" and isinstance(modules[n.target], _ZERO_TYPES):
                if n.target not in ends:
                    ends.append(n.target)
                break
            # attention: the branch ends in its output projection (attn(q, k, v)[0])
            src = n.args[0] if (n.op == "call_function" and n.target is operator.getitem
                                and n.args and isinstance(n.args[0], torch.fx.Node)) else n
            if src.op == "call_module" and isinstance(modules[src.target], nn.MultiheadAttention):
                end = f"{src.target}.out_proj"
                if end not in ends:
                    ends.append(end)
                break
            kind, _ = _classify_node(n, modules)
            if kind not in ("pass", "act") or not n.all_input_nodes:
                missed.append((n.name, f"the residual branch ends in {n.op} {n.target!s}, not a "
                               "Linear/Conv/norm layer gradhealth can zero; name it with layers=[...]"))
                break
            n = n.all_input_nodes[0]
    return ends, "" if ends else "no x + f(x) residual connection was found in the traced graph", missed


def zero_init_residual_(model: nn.Module, *, layers: str | Sequence[str] | None = None) -> InitSummary:
    """Zero the last layer of every residual branch, so each block starts as the identity.

    With ``x + f(x)`` blocks whose ``f`` ends in zero, a deep residual network starts as a
    shallow one: the forward signal and the gradient pass through the skip paths unchanged,
    whatever the depth (Goyal et al. 2017 zero the last BatchNorm scale; Fixup, Zhang et al.
    2019, and SkipInit, De & Smith 2020, the same idea without normalisation). Where the
    branch ends in a normalisation layer its scale (and shift) is zeroed; otherwise the
    weight and bias of its last Linear/Conv.

    Args:
        model: the model; branches are found by tracing it with ``torch.fx``.
        layers: glob pattern(s) naming the layers to zero instead (use it when the model
            cannot be traced); a pattern that matches nothing is an error.

    Returns:
        :class:`InitSummary`.

    Raises:
        ParameterError: no residual branch found and no ``layers`` given.
    """
    owner = "zero_init_residual_"
    if not isinstance(model, nn.Module):
        raise ParameterError("model", owner, "a torch.nn.Module", type(model).__name__, "pass the model itself.")
    named = {n: m for n, m in model.named_modules() if isinstance(m, _ZERO_TYPES)}
    pats = _patterns(layers, "layers", owner)
    if pats is not None:
        names = []
        for p in pats:
            hit = [n for n in named if fnmatch.fnmatchcase(n, p)]
            if not hit:
                raise ParameterError("layers", owner, "glob patterns matching Linear/Conv/norm layer names", p,
                                     "choose from: " + ", ".join(list(named)[:12]))
            names += [n for n in hit if n not in names]
        source = "layers argument"
    else:
        found, why, missed = _residual_branch_ends(model)
        if not found and missed:
            why = "; ".join(w for _, w in missed[:2])
        if not found:
            raise ParameterError("model", owner, "a model with x + f(x) residual branches (found by torch.fx)",
                                 type(model).__name__, f"{why}; name the last layer of each branch with "
                                 "layers=['blocks.*.fc2'].")
        names, source = found, "end of residual branch"
    summary = InitSummary(owner)
    if pats is None:
        summary.unmatched += missed
    with torch.no_grad():
        for n in names:
            m = named[n]
            before = _std(m.weight) if getattr(m, "weight", None) is not None else 0.0
            written = []
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if isinstance(p, torch.Tensor):
                    p.zero_()
                    written.append(pname)
            summary.changed.append(LayerInit(n, type(m).__name__, "", source, "zeros", written, before, 0.0))
    if summary.unmatched:
        warnings.warn(f"{owner}: {len(summary.unmatched)} residual branch(es) left unchanged: "
                      + "; ".join(f"{n}: {w}" for n, w in summary.unmatched[:3]), UserWarning, stacklevel=2)
    return summary
