"""What one logged step measured: a typed record, and the device values it waits for.

A logged step's measurements start as device tensors (no host sync in the hot path). Each
is queued on the step's :class:`StepRecord` as one typed *pending item* (:class:`GradNorms`,
:class:`ClipSamples`, ...) that knows which parameters or layer its numbers belong to. The
read-back (:mod:`gradhealth.watch._readback`) moves every pending tensor to the host at
once and hands each item its slice of host values; :meth:`Pending.store` writes them into the
record's host fields, keyed by *parameter position* (index into ``LayerMap.params``) or
*layer index*. A key that is absent means "not measured"; a NaN value means "measured, and
not finite" -- the assembly (:mod:`gradhealth.watch._assemble`) keeps the two apart.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["StepRecord", "Iteration", "Pending", "GradNorms", "ClipSamples", "LossScale", "ParamNorms", "UpdateNorms",
           "OutGrad", "TimeGrad", "ActStats", "Loss", "absorb", "decode_clip"]


@dataclass(slots=True)
class StepRecord:
    """One logged step: device tensors until read back, host numbers after.

    Host fields (filled by :func:`absorb`): ``post`` applied (post-clip) gradient norm, ``clip``
    clip coefficient, ``nf`` NaN/Inf count of the gradient, ``pnorm`` parameter norm, ``upd``
    update norm (all by parameter position); ``outg`` sum of squared output-gradient norms and
    ``outn`` number of output entries, ``time`` per-time-step squared gradient norms, ``act``
    ``[std, dead, saturated]`` rows (by layer index).
    """

    step: int
    detail: bool
    pending: list[Pending] = field(default_factory=list)
    post: dict[int, float] = field(default_factory=dict)
    clip: dict[int, float] = field(default_factory=dict)
    clip_exact: bool = True
    clipped: bool = False
    nf: dict[int, int] = field(default_factory=dict)
    nf_bad: int = 0                   # positions whose NaN/Inf count in nf is > 0
    overflow: set[int] = field(default_factory=set)  # finite entries, float32 norm inf (post: float64 norm)
    pnorm: dict[int, float] = field(default_factory=dict)
    upd: dict[int, float] = field(default_factory=dict)
    outg: dict[int, float] = field(default_factory=dict)
    outn: dict[int, int] = field(default_factory=dict)
    time: dict[int, np.ndarray] = field(default_factory=dict)
    act: dict[int, list] = field(default_factory=dict)
    loss: Any = None
    lr: float | None = None
    stepped: bool = False
    skipped: bool = False
    skip_reason: str | None = None
    skipped_pos: set[int] = field(default_factory=set)   # positions whose optimizer step was skipped
    late: list = field(default_factory=list)   # events found after its measurements (a non-finite
    #                                            optimizer state): emitted after the detectors'
    fp_end: tuple | None = None       # (params, positions, samples) at the end of the backward
    fp_sampled: bool = False          # fp_end holds a subset of the gradients (see instruments)
    fp_changed: bool | None = None    # the fingerprints moved between backward end and pre-hook
    versions: tuple | None = None     # (gradients, their version counters) at the end of the backward
    touched: bool | None = None       # a gradient was replaced or changed in place before the step
    clip_uniform: bool | None = None  # one clip coefficient for every tensor (None: not decoded)
    clip_blind: list | None = None    # positions whose samples were all zero (no coefficient)
    scale_end: torch.Tensor | None = None
    origin: Any = None                # the ReplayReport of this step, if one ran
    upd_buffers: dict[int, tuple] = field(default_factory=dict)  # id(opt) -> (params, copies before)
    t: float = field(default_factory=_time.time)

    def nonfinite_unknown(self) -> list[int]:
        """Positions whose gradient norm is not finite and whose NaN/Inf count is not known yet."""
        if math.isfinite(sum(self.post.values())):   # the usual case, without a loop in Python
            return []
        return [p for p, x in self.post.items() if not math.isfinite(x) and p not in self.nf]


@dataclass(slots=True)
class Pending:
    """A device tensor waiting for the host, and where its numbers go."""

    tensor: torch.Tensor

    def store(self, rec: StepRecord, v: np.ndarray, scale: float | None) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclass(slots=True)
class GradNorms(Pending):
    """Applied gradient norms, one per position."""

    positions: list[int] = field(default_factory=list)

    def store(self, rec, v, scale):
        rec.post.update(zip(self.positions, v.tolist()))


@dataclass(slots=True)
class ClipSamples(Pending):
    """Four gradient entries per position at the end of the backward, then the same four at
    the optimizer's pre-hook (see :func:`decode_clip`). ``rest``: while sampling, every
    position the optimizer steps (those not sampled take the common coefficient)."""

    positions: list[int] = field(default_factory=list)
    rest: list[int] | None = None

    def store(self, rec, v, scale):
        decode_clip(rec, self.positions, v, scale, self.rest)


@dataclass(slots=True)
class LossScale(Pending):
    """The GradScaler's scale at the end of the backward (separates unscaling from clipping)."""

    def store(self, rec, v, scale):
        pass   # read by absorb() before the clip samples


@dataclass(slots=True)
class ParamNorms(Pending):
    positions: list[int] = field(default_factory=list)

    def store(self, rec, v, scale):
        rec.pnorm.update(zip(self.positions, v.tolist()))


@dataclass(slots=True)
class UpdateNorms(Pending):
    positions: list[int] = field(default_factory=list)

    def store(self, rec, v, scale):
        rec.upd.update(zip(self.positions, v.tolist()))


@dataclass(slots=True)
class OutGrad(Pending):
    """Squared norm of the gradient w.r.t. one output of a layer (a layer may run twice)."""

    layer: int = -1
    n: int = 0

    def store(self, rec, v, scale):
        rec.outg[self.layer] = rec.outg.get(self.layer, 0.0) + float(v[0])
        rec.outn[self.layer] = rec.outn.get(self.layer, 0) + self.n


@dataclass(slots=True)
class TimeGrad(Pending):
    """Per-time-step squared gradient norms of a recurrent layer's input."""

    layer: int = -1

    def store(self, rec, v, scale):
        prev = rec.time.get(self.layer)
        rec.time[self.layer] = v.astype(float) if prev is None or prev.shape != v.shape else prev + v


@dataclass(slots=True)
class ActStats(Pending):
    """``[std, dead_frac, sat_frac]`` of one output of a layer."""

    layer: int = -1

    def store(self, rec, v, scale):
        rec.act.setdefault(self.layer, []).append(v.astype(float))


@dataclass(slots=True)
class Loss(Pending):
    def store(self, rec, v, scale):
        rec.loss = float(v[0])


def absorb(rec: StepRecord, items: list[Pending], host: list[np.ndarray]) -> None:
    """Write the host values of ``items`` (read back together) into ``rec``."""
    scale = None
    for it, v in zip(items, host):
        if isinstance(it, LossScale):
            scale = float(v[0])
    for it, v in zip(items, host):
        it.store(rec, v, scale)


def _median(x: np.ndarray) -> float:
    """``float(np.median(x))`` of a short non-empty array without NaN, at a tenth of the cost
    (the same value: the middle entry, or the mean of the two middle ones)."""
    s = np.sort(x)
    n = s.size
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


UNIFORM_RTOL = 1e-5   # sampled clip coefficients this close to their median are one coefficient


def decode_clip(rec: StepRecord, pos: list[int], v: np.ndarray, scale: float | None,
                rest: list[int] | None = None) -> None:
    """Clip coefficients from the gradient samples at the end of the backward and at the
    optimizer's pre-hook: a clip by norm scales each tensor uniformly, so the ratio of its
    samples is its clip coefficient (see the watcher's module docstring).

    Also sets ``rec.clip_uniform``: whether every sampled tensor had the same coefficient
    (within :data:`UNIFORM_RTOL`, each tensor's samples agreeing); a second call on one record
    (a second optimizer) makes it False. With ``rest`` (the fingerprints were a subset, see
    :mod:`gradhealth.watch.instruments`) the common coefficient goes to every position of
    ``rest`` not sampled; when there is none, those keep no coefficient and the record is
    marked inexact.
    """
    if not pos:
        return
    half = v.size // 2
    same = np.array_equal(v[:half], v[half:])   # (NaN never equal: compared again with equal_nan)
    if not (same or np.array_equal(v[:half], v[half:], equal_nan=True)):
        rec.fp_changed = True
    elif rec.fp_changed is None:
        rec.fp_changed = False
    if scale is None and same:
        _decode_unclipped(rec, pos, v[:half], rest)
        return
    _decode_general(rec, pos, v, scale, rest)


def _decode_unclipped(rec: StepRecord, pos: list[int], e32: np.ndarray, rest: list[int] | None) -> None:
    """:func:`_decode_general` where the samples after equal those before, bit for bit (no
    clipping, no unscaling: the usual step). Every ratio is then exactly 1, no tensor is
    inexact, and the general path would give each sampled tensor with a finite non-zero sample
    the coefficient 1.0, the rest (while sampling) the common 1.0, and no clip: the same here
    without the per-sample arithmetic. (NaN samples never compare equal: they take the
    general path.)"""
    e = e32.reshape(len(pos), 4)
    has = (np.isfinite(e) & (e != 0)).any(axis=1)
    uniform = bool(has.any())
    if not has.all():
        # (unchanged samples: no clip, so every tensor is unscaled, the blind ones too)
        _blind(rec, pos, has)
        has = np.ones_like(has) if uniform else has
    rec.clip_uniform = uniform if rec.clip_uniform is None else False
    if not uniform:
        if rest is not None:
            rec.clip_exact = False
        return
    clip = rec.clip
    clip.update(dict.fromkeys(np.asarray(pos)[has].tolist(), 1.0))
    if rest is not None:
        missing = dict.fromkeys(rest, 1.0)
        missing.update(clip)
        clip.update(missing)


def _decode_general(rec: StepRecord, pos: list[int], v: np.ndarray, scale: float | None,
                    rest: list[int] | None) -> None:
    half = v.size // 2
    e = v[:half].astype(float).reshape(len(pos), 4)
    k = v[half:].astype(float).reshape(len(pos), 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(e) & np.isfinite(k) & (e != 0)
        # per tensor, the sample with the largest |entry| at the end of backward
        j = np.argmax(np.where(ok, np.abs(e), -1.0), axis=1)
        rows = np.arange(len(pos))
        has = ok[rows, j]
        r = k[rows, j] / e[rows, j]
        # uniform scaling of a tensor gives the same ratio for every sample
        bad = ok & (np.abs(k / e - r[:, None]) > 1e-3 * np.maximum(np.abs(r[:, None]), 1e-30))
    inexact = bool(bad.any())
    if inexact:
        rec.clip_exact = False
    if not has.all():
        _blind(rec, pos, has)
        if rest is None and has.any():   # the blind tensors take the common coefficient, as unsampled ones do
            rest = list(pos)
    segs = np.flatnonzero(has)
    vals = r[segs]
    m0 = _median(vals) if vals.size else math.nan
    uniform = bool(vals.size) and not inexact and bool(np.all(np.abs(vals - m0) <= UNIFORM_RTOL * abs(m0)))
    rec.clip_uniform = uniform if rec.clip_uniform is None else False
    if not vals.size:
        if rest is not None:
            rec.clip_exact = False
        return
    ps = np.asarray(pos)[segs]
    if scale is not None and scale > 0:
        vals_c = vals * scale
    else:
        # Without a scaler argument, a common exact power-of-two factor on every tensor is
        # AMP unscaling done by a GradScaler we were not told about, not clipping.
        m = m0   # (np.allclose's test, written out: a finite m is never close to an inf)
        if (m > 0 and np.all(np.abs(vals - m) <= 1e-8 + 1e-6 * abs(m))
                and abs(math.log2(m) - round(math.log2(m))) < 1e-9):
            vals_c = np.ones_like(vals)
        else:
            vals_c = vals
    good = (vals_c > 0) & np.isfinite(vals_c)
    rec.clip.update(zip(ps[good].tolist(), vals_c[good].tolist()))
    if rest is not None:
        common = _median(vals_c)
        if uniform and common > 0 and math.isfinite(common):
            missing = dict.fromkeys(rest, common)   # the unsampled positions (one C-level pass)
            missing.update(rec.clip)
            rec.clip.update(missing)
        else:
            rec.clip_exact = False
    if np.any(np.abs(vals_c - 1.0) > 1e-5):
        rec.clipped = True


def _blind(rec: StepRecord, pos: list[int], has: np.ndarray) -> None:
    """Note the sampled positions without a usable (finite, non-zero) sample: the
    instruments sample them at their largest entry from the next fingerprint on."""
    blind = np.asarray(pos)[~has].tolist()
    rec.clip_blind = blind if rec.clip_blind is None else rec.clip_blind + blind


@dataclass(slots=True)
class Iteration:
    """The state of the training iteration in progress (reset when it ends)."""

    record: StepRecord | None = None
    pending_loss: tuple[int, Any] | None = None    # observe() on an unlogged step
    captures: list = field(default_factory=list)
    n_stepped: int = 0                           # optimizer steps taken (several optimizers)
    primary_stepped: bool = False
    forward: bool = False
    bwd_queued: int = 0                          # 1: queued, 2: re-queued behind later callbacks
    layer_hooks: bool = False
    replayed: bool = False

    @property
    def stepped(self) -> bool:
        """An optimizer stepped in this iteration."""
        return self.n_stepped > 0
