"""Per-tensor reductions grouped by (device, dtype), with no host synchronisation.

``torch._foreach_norm`` computes the norms of a list of tensors in a few fused kernels (the
same primitive ``torch.nn.utils.clip_grad_norm_`` uses); it needs every tensor of one call
on one device with one dtype, so the tensors are grouped first. Results are gathered onto
one device with device-to-device copies (asynchronous), never through the host.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..errors import ParameterError

__all__ = ["tensor_norms", "grad_norms", "nonfinite_counts", "segment_norms", "dense_values", "global_norms",
           "is_dtensor", "local"]


def _out_device(tensors: Sequence, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in tensors:
        if t is not None:
            return t.device
    return torch.device("cpu")


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2 / tensor-parallel
    parameters and gradients), without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor, possibly empty); ``t`` itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def global_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Like :func:`tensor_norms`, but the norm of a sharded DTensor is the norm of the whole
    tensor, not of this rank's shard.

    Each rank's shards are reduced locally (squared norms, one fused reduction), then one
    ``all_reduce`` (SUM) per (mesh, sharded mesh dims) group adds them up -- over the mesh
    dimensions the tensor is *sharded* on only, never over a replicate dimension (which
    would count each shard once per replica: the HSDP double count). Plain tensors pass
    through :func:`tensor_norms` unchanged, with no collective. Every rank must call it at the
    same point with the same tensors (the watcher's logged steps are the same on every rank).
    """
    ts = list(tensors)
    flags = [is_dtensor(t) for t in ts]
    if not any(flags):
        return tensor_norms(ts)
    sq = tensor_norms([local(t) for t in ts]).square()
    groups: dict[tuple, tuple[Any, tuple[int, ...], list[int]]] = {}
    for i, (t, dt) in enumerate(zip(ts, flags)):
        if not dt:
            continue
        dims = tuple(d for d, pl in enumerate(t.placements) if pl.is_shard())
        if dims:
            groups.setdefault((id(t.device_mesh), dims), (t.device_mesh, dims, []))[2].append(i)
    if groups:
        import torch.distributed as dist

        for mesh, dims, idx in groups.values():
            sel = torch.tensor(idx, dtype=torch.long, device=sq.device)
            part = sq.index_select(0, sel)
            for d in dims:
                dist.all_reduce(part, op=dist.ReduceOp.SUM, group=mesh.get_group(d))
            sq = sq.index_copy(0, sel, part)
    return sq.sqrt()


def dense_values(t: torch.Tensor) -> torch.Tensor:
    """The stored values of a maybe-sparse tensor, as a strided tensor; ``t`` itself if strided.

    A sparse COO tensor (an ``nn.Embedding(sparse=True)`` gradient) is coalesced first, so
    repeated indices are summed into one value, as in ``t.to_dense()``; sparse CSR / CSC /
    BSR / BSC give their ``values()``. Norms and NaN/Inf counts of the result are those of
    the tensor (its implicit zeros add nothing), without materialising the dense tensor.
    No host synchronisation (``coalesce`` runs on the device).
    """
    if t.layout == torch.strided:
        return t
    if t.is_sparse:
        return t.coalesce().values()
    return t.values()  # sparse CSR and friends


def _one_group(ts: list, norm_type: float, out_dev: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """The usual case of :func:`tensor_norms` without its per-tensor grouping: dense tensors,
    all of one real floating dtype that needs no wider accumulator, on ``out_dev``. None when
    ``ts`` is not that case.

    Only the dtype is checked tensor by tensor (the one thing a fused norm would get wrong
    without a word: it would round a bfloat16 tensor's norm to bfloat16); a tensor that is not
    strided (sparse: no fused-norm kernel, an uncoalesced one would be mis-summed) or on
    another device makes the fused norm or the stack raise, and the general path takes over.
    A tensor that requires grad gives the same values (the result is detached)."""
    t0 = ts[0]
    if t0 is None:
        return None
    dt, dev = t0.dtype, t0.device
    if dev != out_dev or not dt.is_floating_point or torch.promote_types(
            torch.promote_types(dt, torch.float32), dtype) != dt:
        return None
    for t in ts:
        if t is None or t.dtype is not dt:
            return None
    try:
        out = torch.stack(torch._foreach_norm(ts, norm_type))
    except Exception:
        # sparse and nested layouts, several devices (tests/stats: each layout checked), any
        # tensor type the fused norm refuses: the general path is right for all of them
        return None
    if out.requires_grad:
        out = out.detach()
    return out if dt == dtype else out.to(dtype)


def tensor_norms(tensors: Iterable[torch.Tensor | None], norm_type: float = 2.0, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``norm_type``-norm of each tensor, as one 1-D tensor (float32 by default).

    Args:
        tensors: tensors of any shapes, devices and floating dtypes; ``None`` entries give 0
            (as :func:`torch.nn.utils.clip_grad_norm_` ignores missing gradients). Integer and
            bool tensors are converted to float32 first.
        norm_type: the ``ord`` of the vector norm (2, 1, ``float('inf')``, ...).
        device: where the result lives; default: the device of the first tensor.
        dtype: dtype of the result, and the least precision the norms are accumulated in.
            ``torch.float64`` keeps the norm of float32 entries above ~1e19 finite (their
            squares overflow float32).

    Returns:
        Tensor of shape ``(len(tensors),)`` and dtype ``dtype``. A tensor containing NaN/Inf
        gives NaN/Inf (nothing is filtered: non-finite values are what the caller wants to
        see). Half-precision tensors are reduced in float32 at least, so their norms do not
        overflow at 65504.

    Cost: one ``torch._foreach_norm`` per (device, dtype) group; no host synchronisation.
    """
    ts = list(tensors)
    out_dev = _out_device(ts, device)
    if not ts:
        return torch.zeros(0, dtype=dtype, device=out_dev)
    fast = _one_group(ts, norm_type, out_dev, dtype)
    if fast is not None:
        return fast
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for i, t in enumerate(ts):
        if t is None:
            continue
        t = dense_values(t.detach())
        if not (t.is_floating_point() or t.is_complex()):
            t = t.to(torch.float32)
        groups[(t.device, t.dtype)].append((i, t))
    parts: list[torch.Tensor | None] = [None] * len(ts)
    for (_dev, gdtype), items in groups.items():
        group = [t for _, t in items]
        acc = gdtype if gdtype.is_complex else torch.promote_types(
            torch.promote_types(gdtype, torch.float32), dtype)
        if acc != gdtype:
            norms = torch._foreach_norm(group, norm_type, dtype=acc)
        else:
            norms = torch._foreach_norm(group, norm_type)
        stacked = torch.stack([n.real if n.is_complex() else n for n in norms])
        stacked = stacked.to(device=out_dev, dtype=dtype, non_blocking=True)
        for (i, _), v in zip(items, stacked.unbind(0)):
            parts[i] = v
    if any(p is None for p in parts):
        zero = torch.zeros((), dtype=dtype, device=out_dev)
        parts = [zero if p is None else p for p in parts]
    return torch.stack(parts)


def grad_norms(params: Iterable[torch.Tensor], norm_type: float = 2.0, *,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The norm of each parameter's ``.grad`` (0 where ``.grad`` is None), as a 1-D tensor.

    Same contract as :func:`tensor_norms` applied to ``[p.grad for p in params]``.
    """
    return tensor_norms([p.grad for p in params], norm_type, device=device)


def nonfinite_counts(tensors: Iterable[torch.Tensor | None], *,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The number of NaN/Inf entries of each tensor, as a 1-D int64 tensor (``None`` -> 0).

    Integer and bool tensors are always finite (0). One ``isfinite`` + ``sum`` per tensor;
    no host synchronisation.
    """
    ts = list(tensors)
    out_dev = _out_device(ts, device)
    if not ts:
        return torch.zeros(0, dtype=torch.int64, device=out_dev)
    zero = torch.zeros((), dtype=torch.int64, device=out_dev)
    parts = []
    for t in ts:
        if t is None:
            parts.append(zero)
            continue
        t = dense_values(t.detach())
        if not (t.is_floating_point() or t.is_complex()):
            parts.append(zero)
            continue
        parts.append(torch.logical_not(torch.isfinite(t)).sum().to(out_dev, non_blocking=True))
    return torch.stack(parts)


def segment_norms(norms: torch.Tensor, segment_ids: torch.Tensor | Sequence[int],
                  num_segments: int | None = None) -> torch.Tensor:
    """Combine per-tensor 2-norms into per-group 2-norms: ``sqrt(sum of squares per group)``.

    Args:
        norms: 1-D tensor of per-tensor 2-norms (e.g. from :func:`tensor_norms`).
        segment_ids: the group of each tensor (same length as ``norms``), ints in
            ``[0, num_segments)``. Pass a tensor already on ``norms.device`` to avoid a small
            host-to-device copy each call (build it once, reuse it every step).
        num_segments: number of groups; default ``max(segment_ids) + 1`` (known on the host
            only when ``segment_ids`` is a sequence; pass it when giving a tensor).

    Returns:
        1-D tensor of shape ``(num_segments,)`` (float64 for float64 norms, else float32);
        empty groups are 0.
    """
    if not isinstance(segment_ids, torch.Tensor):
        ids = list(segment_ids)
        if num_segments is None:
            num_segments = (max(ids) + 1) if ids else 0
        segment_ids = torch.tensor(ids, dtype=torch.long, device=norms.device)
    elif num_segments is None:
        raise ParameterError("num_segments", "segment_norms", "given when segment_ids is a tensor",
                             None, "pass num_segments=<number of groups>: reading max(segment_ids) "
                             "from the device would synchronise with it.")
    dt = norms.dtype if norms.dtype == torch.float64 else torch.float32
    sq = norms.to(dt).square()
    out = torch.zeros(num_segments, dtype=dt, device=norms.device)
    return out.index_add_(0, segment_ids.to(norms.device), sq).sqrt_()
