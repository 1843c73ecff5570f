"""Time is depth: the gradient with respect to the hidden state at every step (internal).

``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` run all time steps inside one fused kernel, so their
per-step hidden states are not tensors the probe could hook. :func:`replay` runs the same
recurrence step by step with the module's own weights and equations (the ones in the PyTorch
docs), on the probe batch, so that ``dL/dh_t`` exists for every ``t``.

Chaotic recurrences amplify round-off (with recurrent gain 3, a 1e-7 difference grows by
~1e12 over 100 steps), so an independent replay would follow a different trajectory. The
replay is therefore *anchored*: for the top layer, whose hidden states the module returns
(its ``output``), each step is ``h_t = cell(x_t, h_{t-1}) + (h_t^real - cell(x_t, h_{t-1})).detach()``.
Its values are the module's own, and its Jacobians are those of the real trajectory.
The one-step residual ``max |cell(x_t, h_{t-1}^real) - h_t^real|`` checks that the equations
and weights match (it is ~1e-6 in float32); lower layers of a stacked RNN are replayed freely
and checked against the final states ``h_n``.

The incoming gradient ``dL/d(output)`` (and ``dL/dh_n``) is the one measured on the real
graph, so the replay backpropagates exactly what the model receives.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["replay", "ReplayError", "spectral_radius"]


class ReplayError(Exception):
    """The module cannot be replayed (the message says why)."""


def _get(module, name):
    p = getattr(module, name, None)
    return None if p is None else p.detach().requires_grad_(True)


def spectral_radius(module: nn.Module) -> float | None:
    """Largest |eigenvalue| of a vanilla RNN's recurrent matrix (first layer), else None."""
    mode = getattr(module, "mode", None)
    w = None
    if isinstance(module, nn.RNNBase) and mode in ("RNN_TANH", "RNN_RELU"):
        w = module.weight_hh_l0
    elif isinstance(module, nn.RNNCell):
        w = module.weight_hh
    if w is None:
        return None
    with torch.no_grad():
        return float(torch.linalg.eigvals(w.detach().double()).abs().max())


def replay(module: nn.RNNBase, args: tuple, kwargs: dict, real_outputs: tuple):
    """Run ``module`` step by step.

    Returns:
        ``(outputs, hidden, check)``: ``outputs`` is a tuple aligned with ``real_outputs``
        (output, h_n[, c_n]) built from the replayed steps; ``hidden`` maps
        ``(layer, direction)`` to the list of ``h_t`` tensors in forward time order;
        ``check`` is the largest one-step / final-state mismatch relative to the state scale.
    """
    x, hx, mode = _checked_input(module, args, kwargs)
    L = module.num_layers
    D = 2 if module.bidirectional else 1
    P = getattr(module, "proj_size", 0) or 0
    H_out = P if P > 0 else module.hidden_size
    batched = x.dim() == 3
    x = _time_major(x.detach(), batched, module.batch_first)
    real_out = _time_major(real_outputs[0].detach(), batched, module.batch_first)
    h0, c0 = _initial_state(module, hx, x, batched, mode)
    real_hn = real_outputs[1].detach() if len(real_outputs) > 1 else None
    if real_hn is not None and not batched:
        real_hn = real_hn.unsqueeze(1)
    act = torch.tanh if mode != "RNN_RELU" else torch.relu
    hidden: dict = {}
    h_last, c_last = [], []
    check = 0.0
    scale = float(real_out.abs().max()) + 1e-12
    layer_in = x
    for layer in range(L):
        dir_outs = []
        top = layer == L - 1
        for d in range(D):
            h = h0[layer * D + d]
            c = c0[layer * D + d] if mode == "LSTM" else None
            anchor = (real_out[:, :, d * H_out:(d + 1) * H_out], scale) if top else None
            hs, h, c, step_check = _direction(mode, act, layer_in, h, c, _weights(module, layer, d, P), d,
                                              anchor)
            check = max(check, step_check)
            hidden[(layer, d)] = hs
            h_last.append(h)
            c_last.append(c)
            dir_outs.append(torch.stack(hs))
            if not top and real_hn is not None:
                ref = real_hn[layer * D + d]
                check = max(check, float((h.detach() - ref).abs().max())
                            / (float(ref.abs().max()) + 1e-12))
        layer_in = torch.cat(dir_outs, dim=-1) if D == 2 else dir_outs[0]
    return _final_outputs(module, layer_in, h_last, c_last, batched, len(real_outputs)), hidden, check


def _checked_input(module: nn.RNNBase, args: tuple, kwargs: dict):
    """``(input, hx, mode)`` of one call; ReplayError when the call cannot be replayed."""
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if isinstance(x, PackedSequence):
        raise ReplayError("packed sequences are not replayed")
    if not isinstance(x, torch.Tensor):
        raise ReplayError("the input is not a tensor")
    mode = module.mode
    if mode not in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
        raise ReplayError(f"unknown recurrent mode {mode!r}")
    return x, hx, mode


def _time_major(t: torch.Tensor, batched: bool, batch_first: bool) -> torch.Tensor:
    """``t`` as ``(time, batch, ...)``: an unbatched sequence gets a batch of one."""
    if not batched:
        return t.unsqueeze(1)
    if batch_first:
        return t.transpose(0, 1)
    return t


def _initial_state(module: nn.RNNBase, hx, x: torch.Tensor, batched: bool, mode: str):
    """``(h0, c0)`` as ``(layers * directions, batch, size)``, detached; zeros without ``hx``
    (``c0`` is None for RNN/GRU when ``hx`` is given)."""
    L, H = module.num_layers, module.hidden_size
    D = 2 if module.bidirectional else 1
    P = getattr(module, "proj_size", 0) or 0
    H_out = P if P > 0 else H
    B = x.shape[1]
    if hx is None:
        return x.new_zeros(L * D, B, H_out), x.new_zeros(L * D, B, H)
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    h0 = h0.detach() if batched else h0.detach().unsqueeze(1)
    if c0 is not None:
        c0 = c0.detach() if batched else c0.detach().unsqueeze(1)
    return h0, c0


class _Weights(NamedTuple):
    """One direction of one layer: its weights as fresh leaves (None where absent)."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor | None
    b_hh: torch.Tensor | None
    w_hr: torch.Tensor | None


def _weights(module: nn.RNNBase, layer: int, d: int, P: int) -> _Weights:
    sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
    return _Weights(_get(module, "weight_ih" + sfx), _get(module, "weight_hh" + sfx),
                    _get(module, "bias_ih" + sfx), _get(module, "bias_hh" + sfx),
                    _get(module, "weight_hr" + sfx) if P > 0 else None)


def _cell(mode: str, act, xt: torch.Tensor, h: torch.Tensor, c, w: _Weights):
    """One step of the recurrence (the PyTorch docs' equations): ``(h_t, c_t)``."""
    gi = xt @ w.w_ih.T + (w.b_ih if w.b_ih is not None else 0)
    gh = h @ w.w_hh.T + (w.b_hh if w.b_hh is not None else 0)
    if mode in ("RNN_TANH", "RNN_RELU"):
        return act(gi + gh), c
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c)
        if w.w_hr is not None:
            h_new = h_new @ w.w_hr.T
        return h_new, c
    # GRU
    ir, iz, in_ = gi.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * h, c


def _direction(mode: str, act, layer_in: torch.Tensor, h, c, w: _Weights, d: int, anchor):
    """Every step of one direction of one layer: ``(h_t list in time order, h_last, c_last,
    check)``. ``anchor``: ``(real hidden states of this direction, scale)`` for the top layer,
    whose steps are anchored to the module's own values (module doc), else None."""
    T = layer_in.shape[0]
    hs: list = [None] * T
    check = 0.0
    order = range(T) if d == 0 else range(T - 1, -1, -1)
    for t in order:
        h_new, c = _cell(mode, act, layer_in[t], h, c, w)
        if anchor is not None:
            real_t = anchor[0][t]
            check = max(check, float((h_new.detach() - real_t).abs().max()) / anchor[1])
            h_new = h_new + (real_t - h_new).detach()
        h = h_new
        hs[t] = h
    return hs, h, c, check


def _final_outputs(module: nn.RNNBase, layer_in, h_last: list, c_last: list, batched: bool, n: int) -> tuple:
    """``(output, h_n[, c_n])`` of the replay in the module's own layout, the first ``n``."""
    out = layer_in
    h_n = torch.stack(h_last)
    if not batched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
    elif module.batch_first:
        out = out.transpose(0, 1)
    outs = [out, h_n]
    if module.mode == "LSTM":
        c_n = torch.stack(c_last)
        outs.append(c_n.squeeze(1) if not batched else c_n)
    return tuple(outs[:n])
