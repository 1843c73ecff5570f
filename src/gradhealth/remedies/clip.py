"""Gradient clipping, in place, returning the pre-clip norm(s).

Five ways to bound a step, all fused and sync-free in the manner of
``torch.nn.utils.clip_grad_norm_``: norms are computed with ``torch._foreach_norm`` per
(device, dtype) group, the scale factor is a clamped tensor (``min(1, max_norm / norm)``),
and every gradient is multiplied by it unconditionally -- no ``if norm > max_norm`` on the
host, so no device-to-host synchronisation. The returned norms are tensors on the device.

=========================  ==========================================================
:func:`clip_by_value_`     each entry into ``[-clip_value, clip_value]``
:func:`clip_grad_norm_`    the global norm over all gradients to ``<= max_norm``
:func:`clip_by_layer_norm_` each layer's norm to ``<= max_norm`` separately
:func:`agc_`               unit-wise adaptive clipping (Brock et al. 2021)
:class:`AutoClip`          global norm at a percentile of its history (Seetharaman et al. 2020)
=========================  ==========================================================

Scaling: where a norm exceeds its bound, the gradients are scaled to ``bound * (1 - 1e-6)``
(bf16/fp16 gradients: to ``bound * (1 - 1e-6) * (1 - eps)``, scaled in float32, so their
rounding stays within the bound); where it does not, the factor is exactly 1. So the result is strictly within the bound
(up to rounding) and clipping twice changes nothing -- bit for bit. (torch's
``max_norm / (norm + 1e-6)`` also shrinks gradients that are already inside the bound,
and a second call shrinks them again.) The results agree with ``torch.nn.utils`` to a
relative 1e-6.

Non-finite gradients (documented behaviour, tested): clipping never turns finite values
into NaN and never hides a NaN/Inf. ``torch.nn.utils.clip_grad_norm_`` multiplies every
gradient by ``max_norm / nan = nan`` when one entry is NaN, and by ``0`` when the norm is
Inf (turning the Inf into NaN) -- one bad entry silently destroys all gradients. Here,
where a norm is not finite the scale factor is 1: the gradients are left exactly as they
were, the returned norm is non-finite (so the caller sees it), and the step can be skipped
by :func:`gradhealth.remedies.skip_nonfinite`. ``clip_by_value_`` likewise leaves ``+-inf``
and NaN entries as they are rather than clamping an Inf to a plausible finite value.
``error_if_nonfinite=True`` raises :class:`~gradhealth.errors.NonFiniteError` instead (that
check reads the norm on the host: one sync).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Union

import torch
from torch import nn

from .._checks import check_int, check_real
from ..errors import NonFiniteError, ParameterError
from ..stats.tensors import dense_values

__all__ = ["clip_by_value_", "clip_grad_norm_", "clip_by_layer_norm_", "agc_", "AutoClip"]

Params = Union[torch.Tensor, Iterable[torch.Tensor]]
_EPS = 1e-6  # floor on a unit's gradient norm in AGC (no division by 0)
_SHRINK = 1.0 - 1e-6  # target just inside the bound, so that clipping is idempotent


# --- shared pieces --------------------------------------------------------------------------
def _params_list(parameters: Params, owner: str, param: str = "parameters") -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    rule = "a tensor, an iterable of tensors or a Module"
    if isinstance(parameters, (str, bytes)):
        raise ParameterError(param, owner, rule, parameters, "pass model.parameters() (or the model).")
    try:
        out = list(parameters)
    except TypeError:
        raise ParameterError(param, owner, rule, type(parameters).__name__, "pass model.parameters().") from None
    bad = [p for p in out if not isinstance(p, torch.Tensor)]   # (None is an element too)
    if bad:
        raise ParameterError(param, owner, rule, f"an iterable holding a {type(bad[0]).__name__}",
                             "pass model.parameters() (or the model).")
    return out


def _dense_grad(p: torch.Tensor) -> torch.Tensor | None:
    """The gradient as a tensor that can be scaled in place (sparse: its coalesced values).

    An uncoalesced sparse COO gradient is coalesced and stored back in ``p.grad`` first (its
    duplicates would be counted apart in the norm), so that the values returned by
    :func:`~gradhealth.stats.tensors.dense_values` are ``p.grad``'s own storage.
    """
    g = p.grad
    if g is None:
        return None
    if g.layout == torch.sparse_coo and not g.is_coalesced():
        p.grad = g = g.coalesce()
    return dense_values(g)


def _check_positive(value, name: str, owner: str) -> float:
    return check_real(value, name, owner, low=0.0, low_inclusive=False,
                      fix=f"pass a finite {name} > 0, e.g. {name}=1.0.")


def _check_norm_type(norm_type, owner: str) -> float:
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    if isinstance(norm_type, (int, float)) and not isinstance(norm_type, bool) and norm_type == math.inf:
        return math.inf
    ok = isinstance(norm_type, numbers.Real) and not isinstance(norm_type, bool) and float(norm_type) > 0
    if not ok or math.isnan(float(norm_type)):
        # the rule says what is accepted: any real p > 0, and inf (float('inf') or 'inf') for the max norm
        raise ParameterError("norm_type", owner, "a real number > 0, or inf (float('inf') or 'inf': the "
                             "largest absolute value)", norm_type,
                             "pass norm_type=2.0 (Euclidean), 1.0, or float('inf').")
    return float(norm_type)


def _grouped(grads: Sequence[torch.Tensor]) -> dict[tuple, tuple[list[torch.Tensor], list[int]]]:
    groups: dict[tuple, tuple[list[torch.Tensor], list[int]]] = {}
    for i, g in enumerate(grads):
        gl, il = groups.setdefault((g.device, g.dtype), ([], []))
        gl.append(g)
        il.append(i)
    return groups


def _acc_dtype(device: torch.device) -> torch.dtype:
    """What norms accumulate in: float64, so that no finite float32/bf16/fp16 gradient
    overflows (float32's sum of squares does above a norm of ~1.8e19, and the clip then
    did nothing); float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _per_tensor_norms(grads: Sequence[torch.Tensor], norm_type: float) -> list[torch.Tensor]:
    """One 0-dim norm per gradient (in :func:`_acc_dtype`), fused per (device, dtype); empty
    tensors have norm 0."""
    out: list[torch.Tensor | None] = [None] * len(grads)
    for (device, dtype), (gl, il) in _grouped(grads).items():
        nonempty = [(g, i) for g, i in zip(gl, il) if g.numel() > 0]
        acc = _acc_dtype(device)
        dtype = acc
        if nonempty:
            norms = torch._foreach_norm([g for g, _ in nonempty], norm_type, dtype=acc)
            for n, (_, i) in zip(norms, nonempty):
                out[i] = n
        for i in il:
            if out[i] is None:
                out[i] = torch.zeros((), device=device, dtype=dtype)
    return out  # type: ignore[return-value]


def _combine(norms: Sequence[torch.Tensor], norm_type: float, device) -> torch.Tensor:
    """Norm of norms (the p-norm of a concatenation), on ``device``, without a sync."""
    if not norms:
        return torch.zeros((), device=device)
    acc = _acc_dtype(torch.device(device))
    stacked = torch.stack([n.to(device=device, dtype=acc, non_blocking=True) for n in norms])
    return torch.linalg.vector_norm(stacked, norm_type)


def _scale(total: torch.Tensor, max_norm) -> torch.Tensor:
    """The factor that brings ``total`` within ``max_norm`` (see "Scaling" in the module doc).

    ``max_norm * (1 - 1e-6) / total`` where ``total > max_norm``, else exactly 1 -- and 1
    where ``total`` is not finite.
    """
    over = torch.logical_and(total > max_norm, torch.isfinite(total))
    safe = torch.where(over, total, torch.ones_like(total))  # no 0 or inf in the division
    return torch.where(over, (max_norm * _SHRINK) / safe, torch.ones_like(total))


def _as_float32(total: torch.Tensor) -> torch.Tensor:
    """A returned norm as float32. A finite norm beyond float32's range (finite gradients near
    float32's or bf16's largest values) reads as float32's largest value, not ``inf``: a
    non-finite returned norm always means non-finite gradients, left unchanged."""
    big = torch.finfo(torch.float32).max
    return torch.where(torch.isfinite(total), total.clamp(max=big), total).float()


def _raise_if_nonfinite(total: torch.Tensor, owner: str, what: str) -> None:
    bad = torch.logical_not(torch.isfinite(total)).any()
    if bool(bad):  # the documented host sync of error_if_nonfinite=True
        raise NonFiniteError(
            f"{owner}: the {what} of the gradients is non-finite ({total.tolist()}); the gradients "
            "were left unchanged. Skip this step (gradhealth.remedies.skip_nonfinite(optimizer)) "
            "or find the first non-finite layer with gradhealth.watch(...).")


def _mul_(grads: Sequence[torch.Tensor], coefs: Sequence[torch.Tensor]) -> None:
    """grads[i] *= coefs[i], fused per (device, dtype).

    float32/float64 gradients take the factor in their dtype. A half-precision gradient
    (bf16, fp16) does not: the factor cast to it loses most of its digits (fp16's 1.7e-7 is a
    subnormal), and its rounding alone can end above the bound. So it is scaled in float32, by
    the factor split in two halves (each a normal float32 even where the factor is not:
    bf16's range reaches 3e38), with the margin widened by the dtype's epsilon so that the
    rounded result stays within the bound and a second clip is a no-op; a factor of exactly 1
    leaves it bit for bit."""
    for (device, dtype), (gl, il) in _grouped(grads).items():
        if dtype in (torch.float32, torch.float64) or not dtype.is_floating_point:
            torch._foreach_mul_(gl, [coefs[i].to(device=device, dtype=dtype, non_blocking=True) for i in il])
            continue
        margin = 1.0 - torch.finfo(dtype).eps
        for g, i in zip(gl, il):
            c = coefs[i].to(device=device, dtype=torch.float64, non_blocking=True)
            c = torch.where(c < 1, c * margin, c)
            half = torch.sqrt(c)
            g32 = g.float()
            g32.mul_(half.float()).mul_((c / torch.where(half > 0, half, torch.ones_like(half))).float())
            g.copy_(g32)


# --- by value -------------------------------------------------------------------------------
def clip_by_value_(parameters: Params, clip_value: float) -> torch.Tensor:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``, in place.

    Args:
        parameters: a tensor, an iterable of tensors (``model.parameters()``) or a Module.
        clip_value: the bound, a finite number > 0.

    Returns:
        The pre-clip largest absolute gradient entry (the infinity norm), a 0-dim float32
        tensor on the device of the first gradient (0 if there is none).

    NaN entries stay NaN and ``+-inf`` entries stay infinite (a clamped Inf would look like
    a legitimate gradient of size ``clip_value``); the returned value is then non-finite.
    """
    owner = "clip_by_value_"
    c = _check_positive(clip_value, "clip_value", owner)
    grads = [g for g in (_dense_grad(p) for p in _params_list(parameters, owner)) if g is not None]
    if not grads:
        return torch.zeros(())
    total = _combine(_per_tensor_norms(grads, math.inf), math.inf, grads[0].device)
    for g in grads:
        g.copy_(torch.where(torch.isinf(g), g, g.clamp(-c, c)))
    return total.float()


# --- by global norm ---------------------------------------------------------------------------
def clip_grad_norm_(parameters: Params, max_norm: float, norm_type: float = 2.0, *,
                    error_if_nonfinite: bool = False) -> torch.Tensor:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    Same contract as ``torch.nn.utils.clip_grad_norm_``, except that gradients inside the
    bound are left exactly as they are (so the clip is idempotent) and that a non-finite
    norm leaves the gradients unchanged instead of turning them into NaN (see the module
    docstring).

    Args:
        parameters: a tensor, an iterable of tensors or a Module.
        max_norm: the bound, finite and > 0.
        norm_type: p of the p-norm (> 0), or ``float('inf')``.
        error_if_nonfinite: raise :class:`~gradhealth.errors.NonFiniteError` when the norm
            is NaN/Inf (one host sync).

    Returns:
        The pre-clip global norm, a 0-dim float32 tensor on the first gradient's device.
    """
    owner = "clip_grad_norm_"
    max_norm = _check_positive(max_norm, "max_norm", owner)
    norm_type = _check_norm_type(norm_type, owner)
    grads = [g for g in (_dense_grad(p) for p in _params_list(parameters, owner)) if g is not None]
    if not grads:
        return torch.zeros(())
    total = _combine(_per_tensor_norms(grads, norm_type), norm_type, grads[0].device)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, owner, f"total {norm_type}-norm")
    coef = _scale(total, max_norm)
    _mul_(grads, [coef] * len(grads))
    return _as_float32(total)


# --- by per-layer norm ------------------------------------------------------------------------
def _layers(model: Params, owner: str) -> list[tuple[str, list[torch.Tensor]]]:
    """(layer name, its parameters): modules with parameters of their own, or one per tensor."""
    if isinstance(model, nn.Module):
        out, seen = [], set()
        for name, mod in model.named_modules():
            # a tied/shared weight belongs to the first module that owns it: scaling it once per
            # owner would shrink its gradient by the product of every owner's factor
            ps = [p for p in mod.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in ps)
            if ps:
                out.append((name or "(root)", ps))
        return out
    return [(str(i), [p]) for i, p in enumerate(_params_list(model, owner, "model"))]


def clip_by_layer_norm_(model: Params, max_norm: float, norm_type: float = 2.0, *,
                        error_if_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Clip each layer's gradient norm to at most ``max_norm``, independently, in place.

    A layer is a module with parameters of its own (a Linear's weight and bias together);
    given plain tensors instead of a Module, each tensor is a layer. Unlike the global
    norm, one exploding layer cannot shrink the update of every other layer.

    Args:
        model: a Module, or a tensor / iterable of tensors.
        max_norm: the per-layer bound, finite and > 0.
        norm_type: p of the p-norm (> 0), or ``float('inf')``.
        error_if_nonfinite: raise :class:`~gradhealth.errors.NonFiniteError` if any layer's
            norm is NaN/Inf (one host sync).

    Returns:
        ``{layer name: pre-clip norm}`` (0-dim float32 tensors) for layers with gradients.
        A layer with a non-finite norm keeps its gradients unchanged.
    """
    owner = "clip_by_layer_norm_"
    max_norm = _check_positive(max_norm, "max_norm", owner)
    norm_type = _check_norm_type(norm_type, owner)
    names, members, grads = [], [], []
    for name, ps in _layers(model, owner):
        gs = [g for g in (_dense_grad(p) for p in ps) if g is not None]
        if gs:
            names.append(name)
            members.append(range(len(grads), len(grads) + len(gs)))
            grads.extend(gs)
    if not grads:
        return {}
    pnorms = _per_tensor_norms(grads, norm_type)
    layer_norms = [_combine([pnorms[i] for i in idx], norm_type, grads[idx[0]].device) for idx in members]
    if error_if_nonfinite:
        _raise_if_nonfinite(torch.stack([n.to(grads[0].device) for n in layer_norms]), owner,
                            f"per-layer {norm_type}-norm")
    coefs: list[torch.Tensor] = []
    for idx, n in zip(members, layer_norms):
        c = _scale(n, max_norm)
        coefs.extend([c] * len(idx))
    _mul_(grads, coefs)
    return {n: _as_float32(v) for n, v in zip(names, layer_norms)}


# --- adaptive gradient clipping (AGC) ---------------------------------------------------------
def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit: over every dim but the first (torch's (out, in, ...) layout);
    one norm for the whole tensor when it is a vector or scalar (biases, gains), as in the
    NFNet reference implementation."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def _last_linear(model: nn.Module) -> str | None:
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return last


def agc_(model: Params, clipping: float = 0.01, eps: float = 1e-3, *,
         exclude: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Unit-wise adaptive gradient clipping (AGC; Brock et al. 2021, "High-Performance
    Large-Scale Image Recognition Without Normalization"), in place.

    For each output unit ``i`` of each parameter ``W`` with gradient ``G``::

        G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

    so no unit's step can be large relative to its weights. ``||.||`` is the Frobenius norm
    over everything but the output dimension; a bias or gain vector is treated as one unit.

    Args:
        model: a Module (needed for the default exclusion), or a tensor / iterable of tensors.
        clipping: lambda, the largest allowed ``||G_i|| / ||W_i||`` (finite, > 0). The paper
            uses 0.01 at batch size 4096 and larger values for smaller batches.
        eps: floor on ``||W_i||`` so zero-initialised weights can still move (finite, > 0).
        exclude: glob patterns of parameter names left unclipped. ``None`` (default)
            excludes the final classifier -- the last ``nn.Linear`` of a Module -- as the
            paper does; pass ``()`` to clip every parameter.

    Returns:
        ``{parameter name: pre-clip unit-wise gradient norms}`` for the clipped parameters
        (shape ``(out, 1, ...)`` for matrices, 0-dim for vectors). A unit whose gradient
        norm is NaN/Inf keeps its gradient unchanged.

    Raises:
        ParameterError: a bad ``clipping``/``eps``, or an ``exclude`` pattern that matches
            no parameter.
    """
    owner = "agc_"
    clipping = _check_positive(clipping, "clipping", owner)
    eps = _check_positive(eps, "eps", owner)
    if isinstance(model, nn.Module):
        named = list(model.named_parameters())
        # a tied weight has several names (embedding.weight, head.weight); exclusion by any of them
        all_names = list(model.named_parameters(remove_duplicate=False))
        if exclude is None:
            last = _last_linear(model)
            patterns = [f"{last}.*"] if last is not None else []
        else:
            patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    else:
        named = [(str(i), p) for i, p in enumerate(_params_list(model, owner, "model"))]
        all_names = named
        patterns = [] if exclude is None else ([exclude] if isinstance(exclude, str) else list(exclude))
    names_of: dict[int, list[str]] = {}
    for n, p in all_names:
        names_of.setdefault(id(p), []).append(n)
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n, _ in all_names):
            raise ParameterError("exclude", owner, "glob patterns matching parameter names", pat,
                                 "use names from model.named_parameters(), e.g. exclude=['fc.*'], "
                                 "or exclude=() to clip everything.")
    out = {}
    for name, p in named:
        if any(fnmatch.fnmatchcase(n, pat) for n in names_of[id(p)] for pat in patterns):
            continue
        g = _dense_grad(p)
        if g is None or g.numel() == 0 or p.grad.layout != torch.strided:
            continue
        g_norm = _unitwise_norm(g)
        bound = clipping * _unitwise_norm(p.detach()).clamp(min=eps).to(g_norm.dtype)
        g.mul_(_scale(g_norm, bound).to(g.dtype))
        out[name] = g_norm
    return out


# --- AutoClip ---------------------------------------------------------------------------------
class AutoClip:
    """Clip the global gradient norm at a percentile of its own history (AutoClip;
    Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation
    Networks").

    Each call records the current global gradient norm, then clips to the
    ``percentile``-th percentile of every norm recorded so far (this one included). The
    history stays on the device; the percentile is computed there too (no host sync).
    Non-finite norms are not recorded (they would poison the percentile), and their
    gradients are left unchanged, as in :func:`clip_grad_norm_`.

    Args:
        percentile: in (0, 100]; the paper recommends 10.
        window: keep only the last ``window`` norms (``None``: the whole run, as in the
            paper; costs one float per step).
        norm_type: p of the p-norm, as in :func:`clip_grad_norm_`.

    Example::

        autoclip = gradhealth.remedies.AutoClip(percentile=10.0)
        loss.backward()
        autoclip(model.parameters())        # returns the pre-clip norm
        optimizer.step()
        torch.save({"autoclip": autoclip.state_dict(), ...}, "ckpt.pt")
    """

    def __init__(self, percentile: float = 10.0, *, window: int | None = None, norm_type: float = 2.0):
        owner = "AutoClip"
        self.percentile = check_real(percentile, "percentile", owner, low=0.0, high=100.0,
                                     low_inclusive=False, fix="pass a percentile in (0, 100], e.g. 10.0.")
        if window is not None:
            window = check_int(window, "window", owner, min_value=1)
        self.window = window
        self.norm_type = _check_norm_type(norm_type, owner)
        self._buf: torch.Tensor | None = None
        self._count = 0  # norms recorded (finite or not) since the history started; no sync
        self.threshold: torch.Tensor | None = None

    def _record(self, total: torch.Tensor) -> torch.Tensor:
        v = torch.where(torch.isfinite(total), total.float(), torch.full_like(total.float(), math.nan))
        if self._buf is None or self._buf.device != v.device:
            cap = self.window or 1024
            buf = torch.full((cap,), math.nan, device=v.device)
            if self._buf is not None:
                n = min(self._buf.numel(), cap)
                buf[:n] = self._buf[:n].to(v.device)
            self._buf = buf
        if self.window is None and self._count >= self._buf.numel():
            grown = torch.full((2 * self._buf.numel(),), math.nan, device=v.device)
            grown[: self._buf.numel()] = self._buf
            self._buf = grown
        pos = self._count % self._buf.numel() if self.window else self._count
        self._buf[pos] = v
        self._count += 1
        n = min(self._count, self._buf.numel())
        return torch.nanquantile(self._buf[:n], self.percentile / 100.0)

    def __call__(self, parameters: Params) -> torch.Tensor:
        """Record the norm of ``parameters``' gradients and clip them; returns the pre-clip norm."""
        grads = [g for g in (_dense_grad(p) for p in _params_list(parameters, "AutoClip"))
                 if g is not None]
        if not grads:
            return torch.zeros(())
        total = _combine(_per_tensor_norms(grads, self.norm_type), self.norm_type, grads[0].device)
        threshold = self._record(total)
        self.threshold = threshold
        # A NaN threshold (no finite norm recorded yet) compares False: factor 1.
        coef = _scale(total, threshold)
        _mul_(grads, [coef] * len(grads))
        return total.float()

    @property
    def history(self) -> torch.Tensor:
        """Recorded norms, oldest first (NaN where a norm was not finite)."""
        if self._buf is None:
            return torch.zeros(0)
        n = min(self._count, self._buf.numel())
        if self.window and self._count > self._buf.numel():
            start = self._count % self._buf.numel()
            return torch.cat([self._buf[start:], self._buf[:start]])
        return self._buf[:n].clone()

    def state_dict(self) -> dict:
        """Everything needed to resume: the settings and the history (on the CPU)."""
        return {"percentile": self.percentile, "window": self.window, "norm_type": self.norm_type,
                "history": self.history.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the history moves to the gradients' device on use)."""
        try:
            hist = torch.as_tensor(state["history"], dtype=torch.float32).flatten()
            percentile, window = state["percentile"], state["window"]
            norm_type = state["norm_type"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ParameterError("state", "AutoClip.load_state_dict", "a dict from AutoClip.state_dict()",
                                 type(state).__name__, f"pass autoclip.state_dict() as saved ({exc}).") from None
        self.__init__(percentile, window=window, norm_type=norm_type)
        cap = window or max(1024, 1 << max(hist.numel() - 1, 0).bit_length())
        hist = hist[-cap:]
        self._buf = torch.full((cap,), math.nan)
        self._buf[: hist.numel()] = hist
        # The restored history is chronological from position 0, so the next write goes
        # right after it (with a full window: position 0, the oldest).
        self._count = hist.numel()

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile}, window={self.window}, recorded={self._count})"
