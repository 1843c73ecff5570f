"""The input-output Jacobian's top singular values without materialising the Jacobian.

For a network ``y = f(x)`` with Jacobian ``J = dy/dx`` (``m x n``), dynamical isometry
(Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning through
dynamical isometry") asks that *all* singular values of ``J`` be close to 1. We estimate

* the largest singular values by **Lanczos** iteration on the symmetric operator ``J^T J``
  (or ``J J^T``, whichever side is smaller), with full reorthogonalisation. Each step needs one
  Jacobian-vector product ``J v`` and one vector-Jacobian product ``J^T u``;
* the root-mean-square singular value ``sqrt(||J||_F^2 / min(m, n))`` by **Hutchinson**'s
  estimator ``||J||_F^2 = E ||J^T u||^2`` with Rademacher ``u`` (vector-Jacobian products only).

Both products come from reverse mode on one recorded graph: ``J^T u`` is an ordinary backward
pass, and ``J v`` is the *double-backward trick*: ``g(u) = J^T u`` is linear in ``u``, so
``J v = d<g(u), v>/du`` is a backward pass through the graph of ``g`` (built once with
``create_graph=True``). This works on any model whose operations have double backward (all
standard layers, including LSTM/GRU and attention on CPU), needs no functional rewrite of the
model, and costs about one extra backward per product. Memory is ``O(steps * n)`` for the
Lanczos basis, against ``O(m * n)`` for the full Jacobian.

The full Jacobian (``torch.autograd.functional.jacobian``) is used only as the test oracle.

:func:`model_spectrum` is the probe's driver: it reruns the model on (a sub-batch of) the
probe's batch, with the inputs (or, for integer inputs, the first layer's output) as fresh
leaves, and hands the recorded graph to :func:`spectrum_from_graph`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from .._checks import check_int
from ..errors import ModelError
from ._capture import iter_floats
from ._inputs import batch_size, make_leaves, short
from ._options import ProbeOptions
from ._state import ModelState, set_mode
from .result import JacobianSpectrum

__all__ = ["jacobian_spectrum", "spectrum_from_graph", "lanczos", "model_spectrum"]


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, *, steps: int,
            generator: torch.Generator | None, device, dtype, k: int = 1,
            tol: float = 1e-3) -> tuple[np.ndarray, int, bool]:
    """Ritz values of a symmetric PSD operator by Lanczos with full reorthogonalisation.

    Args:
        matvec: ``v -> A v`` on 1-D tensors of length ``dim``.
        dim: size of the operator.
        steps: the most Lanczos steps to take (at most ``dim``).
        generator, device, dtype: for the random start vector.
        k, tol: stop early once the top ``k`` Ritz values all changed by less than ``tol``
            (relative) in one step.

    Returns:
        ``(ritz values descending, steps taken, converged)``; converged means the largest Ritz
        value changed by less than 1% in the last step (or the Krylov space was exhausted).
    """
    steps = max(1, min(steps, dim))
    v = torch.randn(dim, generator=generator, device=device, dtype=dtype)
    v = v / v.norm()
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    prev_top = prev_ritz = None
    converged = False
    w_prev = None
    for j in range(steps):
        w = matvec(basis[-1])
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        w = w - alpha * basis[-1]
        if w_prev is not None:
            w = w - betas[-1] * basis[-2]
        # Full reorthogonalisation, twice ("twice is enough", Parlett): Ritz values stay
        # clean of ghost copies even when the top eigenvalue converges early.
        V = torch.stack(basis)
        for _ in range(2):
            w = w - V.T @ (V @ w)
        beta = float(w.norm())
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ritz = np.sort(np.linalg.eigvalsh(T))[::-1]
        top = ritz[0]
        if prev_top is not None and abs(top - prev_top) <= 0.01 * abs(top):
            converged = True
        settled = (prev_ritz is not None and len(ritz) > k and
                   all(abs(a - b) <= tol * abs(ritz[0]) for a, b in zip(ritz[:k], prev_ritz[:k])))
        prev_top, prev_ritz = top, ritz
        scale = abs(top)
        if not math.isfinite(beta) or beta <= 1e-7 * scale or j == steps - 1 or settled:
            if math.isfinite(beta) and beta <= 1e-7 * scale:
                converged = True  # invariant subspace: the Ritz values are exact
            if len(alphas) == dim:
                converged = True
            return ritz, j + 1, converged
        betas.append(beta)
        w_prev = w
        basis.append(w / beta)
    return ritz, steps, converged  # pragma: no cover - loop always returns


def _flat(ts: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(l)).reshape(-1)
                      for t, l in zip(ts, like)])


def _split(v: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for l in like:
        n = l.numel()
        out.append(v[i:i + n].view_as(l))
        i += n
    return out


def spectrum_from_graph(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], *,
                        k: int = 3, steps: int = 16, hutchinson: int = 4,
                        generator: torch.Generator | None = None, wrt: str = "input",
                        examples: int | None = None) -> JacobianSpectrum:
    """Spectrum of ``d(outputs)/d(inputs)`` on an already recorded graph (see module doc).

    ``inputs`` must require grad and ``outputs`` must depend on them. The graph is kept
    (``retain_graph=True``); the caller drops it.
    """
    outs = [o for o in outputs]
    xs = [x for x in inputs]
    m = sum(o.numel() for o in outs)
    n = sum(x.numel() for x in xs)
    if m == 0 or n == 0:
        raise ModelError("the Jacobian is empty (no output or input entries)")
    dtype = outs[0].dtype
    device = outs[0].device
    us = [torch.zeros_like(o, requires_grad=True) for o in outs]
    gs = torch.autograd.grad(outs, xs, us, create_graph=True, allow_unused=True)
    if all(g is None for g in gs):
        raise ModelError("the output does not depend on the input (no gradient path)")
    g_pairs = [(g, x) for g, x in zip(gs, xs) if g is not None and g.requires_grad]

    # Products run in the model's dtype; the Lanczos bookkeeping runs in float64, and each
    # composite product is rescaled in between, so that ||J||^2 never under- or overflows
    # float32 (a 20-layer sigmoid net has ||J|| ~ 1e-17: squared, that is below float32's range).
    def jt(u_flat):  # J^T u
        r = torch.autograd.grad(outs, xs, _split(u_flat.to(dtype), outs), retain_graph=True,
                                allow_unused=True)
        return _flat(r, xs).detach().double()

    def jv(v_flat):  # J v  (double-backward trick)
        if not g_pairs:
            return torch.zeros(m, dtype=torch.float64, device=device)
        vs = _split(v_flat.to(dtype), xs)
        v_of = {id(x): v for x, v in zip(xs, vs)}
        r = torch.autograd.grad([g for g, _ in g_pairs], us, [v_of[id(x)] for _, x in g_pairs],
                                retain_graph=True, allow_unused=True)
        return _flat(r, outs).detach().double()

    def compose(first, second):
        def op(v):
            a = first(v)
            s = a.norm()
            if not bool(s > 0) or not bool(torch.isfinite(s)):
                return second(a) if bool(torch.isfinite(s)) else a.new_full((dim,), math.nan)
            return second(a / s) * s
        return op

    if n <= m:
        dim, name = n, "J^T J"
        op = compose(jv, jt)
    else:
        dim, name = m, "J J^T"
        op = compose(jt, jv)
    ritz, taken, converged = lanczos(op, dim, steps=steps, generator=generator, device=device,
                                     dtype=torch.float64, k=k)
    top = tuple(float(math.sqrt(max(t, 0.0))) for t in ritz[:k])
    # Hutchinson on ||J||_F^2 with Rademacher vectors on the output side (backward passes only).
    fro = []
    for _ in range(max(1, hutchinson)):
        u = torch.randint(0, 2, (m,), generator=generator, device=device).to(torch.float64) * 2 - 1
        fro.append(float(jt(u).square().sum()))
    rank = min(m, n)
    rms = math.sqrt(max(sum(fro) / len(fro), 0.0) / rank)
    spread = top[0] / rms if rms > 0 else math.inf
    return JacobianSpectrum(top=top, rms=rms, spread=spread, wrt=wrt,
                            examples=examples if examples is not None else 0, shape=(m, n),
                            steps=taken, operator=name, converged=bool(converged))


def jacobian_spectrum(fn: Callable[..., torch.Tensor], x: torch.Tensor, *, k: int = 3,
                      steps: int = 16, hutchinson: int = 4, seed: int = 0) -> JacobianSpectrum:
    """Top-``k`` singular values, RMS singular value and spread of the Jacobian of ``fn`` at ``x``.

    Args:
        fn: ``x -> y`` (a model in the mode you want, or any differentiable function).
        x: the input; the Jacobian is ``d fn(x).ravel() / d x.ravel()`` (for a batch: the
            Jacobian of the whole batch, block-diagonal when examples do not interact).
        k: number of top singular values to return.
        steps: Lanczos steps (each costs about two backward passes).
        hutchinson: probe vectors for the RMS singular value.
        seed: seeds the start and probe vectors (the global RNG is not touched).

    Returns:
        :class:`~gradhealth.probe.result.JacobianSpectrum`.

    Example:
        >>> import torch
        >>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> s = jacobian_spectrum(lambda v: v @ W.T, torch.ones(3))
        >>> [round(t, 4) for t in s.top]
        [3.0, 2.0, 1.0]
    """
    k = check_int(k, "k", "jacobian_spectrum", min_value=1)
    steps = check_int(steps, "steps", "jacobian_spectrum", min_value=1)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        from ..errors import ParameterError

        raise ParameterError("x", "jacobian_spectrum", "a floating-point torch.Tensor",
                             type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype,
                             "pass the input as a float tensor (integer ids have no Jacobian).")
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        y = fn(xr)
        outs = [y] if isinstance(y, torch.Tensor) else [t for t in y if isinstance(t, torch.Tensor)]
        return spectrum_from_graph(outs, [xr], k=k, steps=steps, hutchinson=hutchinson,
                                   generator=gen, wrt="x", examples=int(x.shape[0]) if x.ndim > 1 else 1)


# ------------------------------------------------------------------------------------------
# the probe's driver: the model rerun on (a sub-batch of) the probe's batch
# ------------------------------------------------------------------------------------------
_NOT_MEASURED = "Jacobian spectrum not measured: "


class _Call(NamedTuple):
    """One call of the model for the Jacobian: its inputs and how many examples they hold."""

    args: tuple
    kwargs: dict
    examples: int


def model_spectrum(model: nn.Module, args: tuple, kwargs: dict, slots: list, leaves: list,
                   opts: ProbeOptions, state: ModelState, notes: list[str]) -> JacobianSpectrum | None:
    """The input-output Jacobian spectrum of ``model`` at the probe's batch, or None (with a note).

    Measured on the first ``opts.jacobian_batch`` examples (every input whose first dimension
    is the batch size is sliced); when that sliced call fails (an input that is not
    batch-major, say a ``(B, B)`` mask), on the whole batch instead. A sequence-first RNN
    always gets the whole batch. ``leaves`` are the probe's input leaves: without any (integer
    inputs), the Jacobian is taken with respect to the first layer's output (``slots[0]``).
    The model is rerun in ``opts.mode`` with ``state`` restored first.
    """
    B = batch_size(args, kwargs)
    jb = opts.jacobian_batch
    seq_first = any(isinstance(m, nn.RNNBase) and not m.batch_first for m in model.modules())
    sub = B
    if jb is not None and B is not None and B > jb and not seq_first:
        sub = jb
    if sub != B:
        # the sub-batch slices every input whose first dimension equals the batch size; one
        # that is not batch-major (a (B, B) attention mask, say) breaks the sliced call
        trial: list[str] = []
        res = _spectrum_at(model, _cut(args, kwargs, B, sub), slots, leaves, opts, state, trial)
        failed = [n.removeprefix(_NOT_MEASURED) for n in trial if n.startswith(_NOT_MEASURED)]
        if res is not None or not failed:
            notes.extend(trial)
            return res
        notes.append(f"the Jacobian on the first {sub} examples failed ({failed[0]}); it was "
                     "measured on the whole batch instead.")
    if seq_first and jb is not None and B is not None and B > jb:
        notes.append("the model has a sequence-first RNN, so the Jacobian uses the whole batch.")
    return _spectrum_at(model, _cut(args, kwargs, B, B), slots, leaves, opts, state, notes)


def _cut(args: tuple, kwargs: dict, B: int | None, sub: int | None) -> _Call:
    """The first ``sub`` examples of every input whose first dimension is ``B``."""
    def cut(v):
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and B is not None and v.shape[0] == B and sub != B:
            return v[:sub]
        return v
    return _Call(tuple(cut(x) for x in args), {k: cut(x) for k, x in kwargs.items()},
                 sub if sub is not None else 1)


def _grab_first(captured: list):
    """A forward hook that keeps the module's first floating-point tensor output in
    ``captured`` (as a fresh leaf when it does not require grad)."""
    def grab(module, inp, out):
        t = out if isinstance(out, torch.Tensor) else None
        if t is None or captured or not t.is_floating_point():
            return None
        if not t.requires_grad:
            t = t.detach().requires_grad_(True)
            captured.append(t)
            return t
        captured.append(t)
        return None
    return grab


def _spectrum_at(model: nn.Module, call: _Call, slots: list, leaves: list, opts: ProbeOptions,
                 state: ModelState, notes: list[str]) -> JacobianSpectrum | None:
    """The spectrum on one call of the model, or None with a ``Jacobian spectrum not measured``
    note (a failure of the model or of double backward is such a note, not an error)."""
    a, kw = call.args, call.kwargs
    use_inputs = bool(leaves)
    captured: list = []
    handle = None
    if use_inputs:
        a, kw, new_leaves = make_leaves(a, kw)
        xs = [l for _, l in new_leaves]
        wrt = ", ".join(label for label, _ in new_leaves)
    else:
        if not slots:
            notes.append(_NOT_MEASURED + "no layer ran.")
            return None
        handle = slots[0].module.register_forward_hook(_grab_first(captured))
        xs, wrt = [], f"output of {slots[0].name} (the inputs are not floating-point)"
    try:
        state.restore()  # BatchNorm statistics as the user had them, for a like-for-like pass
        set_mode(model, opts.mode)
        torch.manual_seed(opts.seed)
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(opts.seed + 2)
        with torch.enable_grad():
            out = model(*a, **kw)
            if not use_inputs:
                if not captured:
                    notes.append(_NOT_MEASURED + f"{slots[0].name} returned no tensor.")
                    return None
                xs = captured[:1]
            ys = [o for o in iter_floats(out) if o.requires_grad]
            if not ys:
                notes.append(_NOT_MEASURED + "the output does not depend on the input.")
                return None
            return spectrum_from_graph(ys, xs, k=opts.top_k, steps=opts.lanczos_steps, generator=gen,
                                       wrt=wrt, examples=call.examples)
    except ModelError as exc:
        notes.append(_NOT_MEASURED + f"{exc}.")
    except RuntimeError as exc:
        notes.append(_NOT_MEASURED + "an operation of the model has no double "
                     f"backward ({short(exc, 200)}).")
    finally:
        if handle is not None:
            handle.remove()
    return None
