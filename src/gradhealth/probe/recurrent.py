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
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if isinstance(x, PackedSequence):
        raise ReplayError("packed sequences are not replayed")
    if not isinstance(x, torch.Tensor):
        raise ReplayError("the input is not a tensor")
    mode = module.mode
    if mode not in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
        raise ReplayError(f"unknown recurrent mode {mode!r}")
    L, H = module.num_layers, module.hidden_size
    D = 2 if module.bidirectional else 1
    P = getattr(module, "proj_size", 0) or 0
    H_out = P if P > 0 else H
    batched = x.dim() == 3
    x = x.detach()
    if not batched:
        x = x.unsqueeze(1)
    elif module.batch_first:
        x = x.transpose(0, 1)
    T, B = x.shape[0], x.shape[1]
    real_out = real_outputs[0].detach()
    if not batched:
        real_out = real_out.unsqueeze(1)
    elif module.batch_first:
        real_out = real_out.transpose(0, 1)
    if hx is None:
        h0 = x.new_zeros(L * D, B, H_out)
        c0 = x.new_zeros(L * D, B, H)
    else:
        if mode == "LSTM":
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        h0 = h0.detach() if batched else h0.detach().unsqueeze(1)
        if c0 is not None:
            c0 = c0.detach() if batched else c0.detach().unsqueeze(1)
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
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih, w_hh = _get(module, "weight_ih" + sfx), _get(module, "weight_hh" + sfx)
            b_ih, b_hh = _get(module, "bias_ih" + sfx), _get(module, "bias_hh" + sfx)
            w_hr = _get(module, "weight_hr" + sfx) if P > 0 else None
            h = h0[layer * D + d]
            c = c0[layer * D + d] if mode == "LSTM" else None
            hs: list = [None] * T
            top = layer == L - 1
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                xt = layer_in[t]
                gi = xt @ w_ih.T + (b_ih if b_ih is not None else 0)
                gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
                if mode in ("RNN_TANH", "RNN_RELU"):
                    h_new = act(gi + gh)
                elif mode == "LSTM":
                    i, f, g, o = (gi + gh).chunk(4, dim=-1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c)
                    if w_hr is not None:
                        h_new = h_new @ w_hr.T
                else:  # GRU
                    ir, iz, in_ = gi.chunk(3, dim=-1)
                    hr, hz, hn = gh.chunk(3, dim=-1)
                    r = torch.sigmoid(ir + hr)
                    z = torch.sigmoid(iz + hz)
                    n = torch.tanh(in_ + r * hn)
                    h_new = (1 - z) * n + z * h
                if top:
                    real_t = real_out[t, :, d * H_out:(d + 1) * H_out]
                    check = max(check, float((h_new.detach() - real_t).abs().max()) / scale)
                    h_new = h_new + (real_t - h_new).detach()
                h = h_new
                hs[t] = h
            hidden[(layer, d)] = hs
            h_last.append(h)
            c_last.append(c)
            dir_outs.append(torch.stack(hs))
            if not top and real_hn is not None:
                ref = real_hn[layer * D + d]
                check = max(check, float((h.detach() - ref).abs().max())
                            / (float(ref.abs().max()) + 1e-12))
        layer_in = torch.cat(dir_outs, dim=-1) if D == 2 else dir_outs[0]
    out = layer_in
    h_n = torch.stack(h_last)
    if not batched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
    elif module.batch_first:
        out = out.transpose(0, 1)
    outs = [out, h_n]
    if mode == "LSTM":
        c_n = torch.stack(c_last)
        outs.append(c_n.squeeze(1) if not batched else c_n)
    return tuple(outs[:len(real_outputs)]), hidden, check
