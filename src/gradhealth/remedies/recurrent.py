"""Remedies for gated recurrent cells: the LSTM forget-gate bias, the GRU update-gate bias.

An LSTM's cell state carries the gradient back through time multiplied by the forget gate
``f_t = sigmoid(b_f + W_if x_t + W_hf h_{t-1})`` at every step; with torch's default init
``b_f ~ 0``, so ``f_t ~ 0.5`` and the gradient over ``T`` steps shrinks like ``0.5^T``. A positive
forget bias keeps the cell's memory open (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1),
and chrono init (Tallec & Ollivier 2018) matches it to the time scales of the task:
``b_f = log(U(1, T_max - 1))``, ``b_i = -b_f``.

A GRU keeps its state with the update gate: ``h_t = (1 - z_t) n_t + z_t h_{t-1}``, so ``z_t``
plays the forget gate's part (and ``1 - z_t`` the input gate's); with ``b_z ~ 0`` it is ~0.5 and
the gradient through time shrinks the same way. The same biases (1, or chrono's
``log(U(1, T_max - 1))``) go on ``b_z``.

torch stores each layer's gate biases as ``bias_ih`` and ``bias_hh``, chunks of ``hidden_size``
entries: ``[i, f, g, o]`` for an LSTM, ``[r, z, n]`` for a GRU (the forget and update gates are
both the second chunk); the effective bias is their sum. These remedies write the chosen value
into ``bias_ih`` and zero the same chunk of ``bias_hh``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_int, check_real
from ..errors import ParameterError
from ._summary import InitSummary, LayerInit

__all__ = ["forget_gate_bias_"]

_OWNER = "forget_gate_bias_"
_LSTM_TYPES = (nn.LSTM, nn.LSTMCell)
_GATED_TYPES = (nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell)


def _bias_pairs(m: nn.Module) -> list[tuple[str, str]]:
    """``(bias_ih name, bias_hh name)`` per layer and direction of an LSTM / GRU (or cell)."""
    if isinstance(m, (nn.LSTMCell, nn.GRUCell)):
        return [("bias_ih", "bias_hh")] if m.bias else []
    if not m.bias:
        return []
    out = []
    for k in range(m.num_layers):
        for suffix in ("", "_reverse")[: 2 if m.bidirectional else 1]:
            out.append((f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}"))
    return out


def forget_gate_bias_(model: nn.Module, value: float = 1.0, *, chrono: int | None = None,
                      layers: str | Sequence[str] | None = None) -> InitSummary:
    """Set the forget-gate bias of every ``nn.LSTM`` / ``nn.LSTMCell`` in ``model``, and the
    update-gate bias ``b_z`` (the GRU's forget gate) of every ``nn.GRU`` / ``nn.GRUCell``, in place.

    Args:
        model: a module containing LSTM or GRU layers (or one itself).
        value: the forget-gate bias (default 1, Jozefowicz et al. 2015); ignored with ``chrono``.
        chrono: ``T_max`` for chrono init (Tallec & Ollivier 2018): the forget bias of each unit
            is drawn as ``log(U(1, T_max - 1))`` (torch's global RNG) and the input-gate bias set to
            its negative, so that the units' memories span 1..T_max steps (a GRU has no separate
            input gate: only ``b_z`` is drawn). Use the length of the dependencies to learn
            (e.g. the sequence length).
        layers: glob pattern(s) on module names to change only some LSTMs / GRUs.

    Returns:
        An :class:`InitSummary`: one entry per LSTM / GRU module changed (``scheme`` says the values
        and the mean effective forget bias before and after; ``std_before`` / ``std_after`` are
        of the first ``bias_ih``); modules built with ``bias=False`` are listed as unmatched.

    Raises:
        ParameterError: ``model`` has no LSTM or GRU (matching ``layers``), or ``value`` / ``chrono``
            break their rule.

    >>> import torch
    >>> lstm = torch.nn.LSTM(4, 8)
    >>> _ = forget_gate_bias_(lstm, 1.0)
    >>> float((lstm.bias_ih_l0 + lstm.bias_hh_l0)[8:16].detach().min())
    1.0
    """
    if not isinstance(model, nn.Module):
        raise ParameterError("model", _OWNER, "a torch.nn.Module", type(model).__name__,
                             "pass the model (or the nn.LSTM / nn.GRU) itself.")
    value = check_real(value, "value", _OWNER, fix="pass a finite number, e.g. value=1.0.")
    if chrono is not None:
        chrono = check_int(chrono, "chrono", _OWNER, min_value=3,
                           fix="pass the longest dependency in steps, e.g. chrono=400 (>= 3).")
    found = [(n or "(root)", m) for n, m in model.named_modules() if isinstance(m, _GATED_TYPES)]
    if layers is not None:
        pats = [layers] if isinstance(layers, str) else list(layers)
        found = [(n, m) for n, m in found if any(fnmatch.fnmatchcase(n, str(p)) for p in pats)]
    if not found:
        raise ParameterError("model", _OWNER, "a module containing nn.LSTM, nn.GRU (or their cells)"
                             + (" matching layers" if layers is not None else ""),
                             type(model).__name__, "a plain nn.RNN has no gate: use orthogonal_ or "
                             "critical_(..., distribution='orthogonal').")
    summary = InitSummary(_OWNER)
    for name, m in found:
        pairs = _bias_pairs(m)
        if not pairs:
            summary.unmatched.append((name, "built with bias=False: it has no gate bias"))
            continue
        h = m.hidden_size
        f, i = slice(h, 2 * h), slice(0, h)     # the forget (LSTM) / update (GRU) gate; input gate
        lstm = isinstance(m, _LSTM_TYPES)
        before, after, written = [], [], []
        std_before = float(getattr(m, pairs[0][0]).detach().double().std())
        with torch.no_grad():
            for ih_name, hh_name in pairs:
                ih, hh = getattr(m, ih_name), getattr(m, hh_name)
                before.append(float((ih[f] + hh[f]).mean()))
                if chrono is not None:
                    bf = torch.empty(h, dtype=torch.float64).uniform_(1.0, chrono - 1.0).log_()
                    ih[f] = bf.to(ih.dtype)
                    if lstm:
                        ih[i] = -bf.to(ih.dtype)
                        hh[i] = 0.0
                else:
                    ih[f] = value
                hh[f] = 0.0
                after.append(float((ih[f] + hh[f]).mean()))
                written += [ih_name, hh_name]
        b = "b_f" if lstm else "b_z"
        scheme = (f"chrono T_max={chrono}: {b} = log U(1, {chrono - 1})" + (", b_i = -b_f" if lstm else "")
                  if chrono is not None else f"{b} = {value:g}")
        gate = "forget" if lstm else "update"
        scheme += f" (mean {gate}-gate bias {sum(before) / len(before):.3g} -> {sum(after) / len(after):.3g})"
        summary.changed.append(LayerInit(layer=name, module=type(m).__name__, activation="", source="",
                                         scheme=scheme, params=written, std_before=std_before,
                                         std_after=float(getattr(m, pairs[0][0]).detach().double().std())))
    return summary

