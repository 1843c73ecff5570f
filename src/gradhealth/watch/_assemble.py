"""From a step record to :class:`~gradhealth.detectors.StepStats` and run-store rows (pure).

Nothing here touches a tensor, the model or the watcher: the inputs are a read-back
:class:`~gradhealth.watch._record.StepRecord`, the layer table and the layer of each
parameter position. :func:`step_stats` also returns :class:`Measured`, the explicit "was it
measured at this step" masks, so :func:`layer_block` writes NULL for "not measured" and a
number (NaN included) for "measured" without looking at the raw record again.

Per-layer numbers combine the parameters of a layer in quadrature: the layer's gradient norm
is ``sqrt(sum of its parameters' squared norms)``, before clipping (the applied norm divided
by the clip coefficient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detectors.base import LayerTable, StepStats
from ..store.blocks import COLUMN_INDEX, LayerBlock
from ._record import StepRecord

__all__ = ["run_meta", "Measured", "step_stats", "step_row", "layer_block", "forward_depth",
           "model_info"]


@dataclass(frozen=True)
class Measured:
    """What one step measured, apart from the values (NaN can be a measured value).

    Attributes:
        grads: gradient norms were measured (the global norms are not NULL).
        clipped: a clip was detected (the post-clip global norm is not NULL).
        out_grad: per layer, the output-gradient norm was measured.
        act: per layer, the forward statistics were measured.
    """

    grads: bool
    clipped: bool
    out_grad: np.ndarray
    act: np.ndarray


def run_meta(model, config, layer_map, extra: dict | None = None) -> dict:
    """The run store's metadata of a watched run (``extra``: the user's ``meta``, last)."""
    import time

    import torch

    from .. import __version__

    m = {"model": type(model).__name__, "started_at": time.time(), "on_nonfinite": config.on_nonfinite,
         "every": repr(config.every), "detail_every": repr(config.detail_every), "torch": torch.__version__,
         "n_layers": len(layer_map.table), "n_params": int(sum(p.numel() for p in layer_map.params)),
         "source": "gradhealth.watch", "gradhealth": __version__}
    m.update(extra or {})
    return m


def model_info(t: LayerTable) -> dict:
    """Model facts the prescriptions use: depth, normalisation, recurrence, the activation
    used most (the first in layer order on a tie)."""
    acts = [a for a in t.activations if a]
    info: dict[str, Any] = {"depth": int(sum(r in ("weight", "recurrent") for r in t.roles)),
                            "has_norm": "norm" in t.roles,
                            "is_recurrent": "recurrent" in t.roles}
    if acts:
        info["activation"] = max(acts, key=acts.count)
    return info


def forward_depth(t: LayerTable, seen: dict[int, int]) -> LayerTable:
    """``t`` with the forward execution order ``seen`` (layer -> order) as its depth."""
    depth = list(t.depth)
    for i, d in seen.items():
        if i < len(depth):
            depth[i] = d
    return LayerTable(t.names, t.types, t.roles, t.families, t.activations, tuple(depth), t.n_params)


def _nanmean_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Column means over the finite entries (NaN where a column has none), warning-free."""
    a = np.stack(rows)
    ok = np.isfinite(a)
    n = ok.sum(axis=0)
    tot = np.where(ok, a, 0.0).sum(axis=0)
    return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


def _gradients(rec: StepRecord, layer_of: Sequence[int] | np.ndarray, L: int):
    """Per-layer pre-clip gradient norms and NaN/Inf counts, global squared norms pre/post.

    Vectorised by position; the sums run in position order (``bincount`` and ``cumsum``
    accumulate sequentially), as a loop over the positions would."""
    n = len(rec.post)
    if not n:
        return np.full(L, np.nan), np.full(L, -1, dtype=np.int64), 0.0, 0.0
    pos = np.fromiter(rec.post.keys(), dtype=np.int64, count=n)
    post = np.fromiter(rec.post.values(), dtype=float, count=n)
    if rec.clip:
        get = rec.clip.get
        c = np.fromiter((get(p, 1.0) for p in rec.post), dtype=float, count=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            pre = np.where((c > 0) & np.isfinite(c), post / c, post)
    else:
        pre = post
    pre2 = pre * pre
    sq_pre = float(np.cumsum(pre2)[-1])
    sq_post = sq_pre if pre is post else float(np.cumsum(post * post)[-1])
    li = np.asarray(layer_of, dtype=np.int64)[pos]   # (the layer map's is an int64 array already)
    mine = li >= 0
    if not mine.all():
        li, pre2 = li[mine], pre2[mine]
    sq = np.bincount(li, weights=pre2, minlength=L)[:L]
    has = np.bincount(li, minlength=L)[:L] > 0
    nf = rec.nf
    if any(nf.values()):
        cnt = np.fromiter((nf.get(p, 0) for p in rec.post), dtype=np.int64, count=n)[mine]
        tot = np.bincount(li, weights=cnt, minlength=L)[:L].astype(np.int64)   # (exact: counts < 2**53)
    else:
        tot = np.zeros(L, dtype=np.int64)   # no NaN/Inf anywhere: every measured layer counts 0
    return np.where(has, np.sqrt(sq), np.nan), np.where(has, tot, -1), sq_pre, sq_post


_UNMEASURED: dict[int, tuple[np.ndarray, ...]] = {}


def _unmeasured(L: int) -> tuple[np.ndarray, ...]:
    """Read-only "nothing measured" arrays for ``L`` layers (shared by the steps that measure
    no parameter norms, output gradients or forward statistics: most of them):
    ``(nan, -1, nan (L, 3), False)``."""
    got = _UNMEASURED.get(L)
    if got is None:
        got = (np.full(L, np.nan), np.full(L, -1, dtype=np.int64), np.full((L, 3), np.nan), np.zeros(L, dtype=bool))
        for a in got:
            a.setflags(write=False)
        if len(_UNMEASURED) > 64:
            _UNMEASURED.clear()
        _UNMEASURED[L] = got
    return got


def _params_and_updates(rec: StepRecord, layer_of: Sequence[int] | np.ndarray, L: int):
    """Per-layer parameter norms, their NaN/Inf counts and update ratios."""
    if not (rec.pnorm or rec.upd or rec.skipped):
        nan, minus1, _, _ = _unmeasured(L)
        return nan, minus1, nan
    pn_sq = np.zeros(L)
    pn_has = np.zeros(L, dtype=bool)
    nfp = np.full(L, -1, dtype=np.int64)
    for p, v in rec.pnorm.items():
        li = layer_of[p]
        if li >= 0:
            pn_sq[li] += v * v
            pn_has[li] = True
            nfp[li] = max(nfp[li], 0) + (0 if math.isfinite(v) else 1)
    param_norm = np.where(pn_has, np.sqrt(pn_sq), np.nan)
    up_sq = np.zeros(L)
    up_has = np.zeros(L, dtype=bool)
    for p, v in rec.upd.items():
        li = layer_of[p]
        if li >= 0:
            up_sq[li] += v * v
            up_has[li] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        update_ratio = np.where(up_has & pn_has, np.sqrt(up_sq) / param_norm, np.nan)
        if rec.skipped:
            # the layers of a skipped optimizer did not move; with several optimizers the
            # others may have (and keep their measured ratio). Unknown which: all of them.
            skipped = np.zeros(L, dtype=bool)
            for p in rec.skipped_pos:
                li = layer_of[p]
                if li >= 0:
                    skipped[li] = True
            if not rec.skipped_pos:
                skipped[:] = pn_has
            update_ratio = np.where(skipped, 0.0, update_ratio)
    return param_norm, nfp, update_ratio


def _signals(rec: StepRecord, t: LayerTable):
    """Output-gradient norm and rms, forward statistics, per-time-step gradients, and the
    masks of what was measured."""
    L = len(t)
    if not (rec.outg or rec.act or rec.time):
        nan, _, nan3, no = _unmeasured(L)
        return nan, nan, nan3, {}, no, no
    outg = np.full(L, np.nan)
    outr = np.full(L, np.nan)
    out_has = np.zeros(L, dtype=bool)
    for i, v in rec.outg.items():
        if i < L:
            outg[i] = math.sqrt(v)
            outr[i] = math.sqrt(v / max(rec.outn.get(i, 1), 1))
            out_has[i] = True
    act = np.full((L, 3), np.nan)
    act_has = np.zeros(L, dtype=bool)
    for i, vs in rec.act.items():
        if i < L:
            act[i] = _nanmean_rows(vs)
            act_has[i] = True
    time_grad = {t.names[i]: np.sqrt(np.maximum(v, 0)) for i, v in rec.time.items() if i < L}
    return outg, outr, act, time_grad, out_has, act_has


def step_stats(rec: StepRecord, t: LayerTable, layer_of: Sequence[int] | np.ndarray, loss: float | None,
               info: dict) -> tuple[StepStats, Measured]:
    """The :class:`StepStats` of a read-back record, and what it measured.

    Args:
        rec: the record, every value on the host.
        t: the layer table (depth as known now).
        layer_of: the layer index of each parameter position (-1: owned by no layer).
        loss: the observed loss as a float, or None.
        info: model facts (:func:`model_info`).
    """
    L = len(t)
    grad_norm, nfg, sq_pre, sq_post = _gradients(rec, layer_of, L)
    param_norm, nfp, update_ratio = _params_and_updates(rec, layer_of, L)
    outg, outr, act, time_grad, out_has, act_has = _signals(rec, t)
    g_pre = math.sqrt(sq_pre) if rec.post else math.nan
    g_post = math.sqrt(sq_post) if (rec.post and rec.clipped) else math.nan
    origin = None
    if rec.origin is not None:
        o = rec.origin
        origin = {"found": o.found, "module": o.module, "direction": o.direction, "cause": o.cause,
                  "summary": o.summary}
    stats = StepStats(step=rec.step, layers=t, loss=loss, global_grad_norm=g_pre,
                      global_grad_norm_clipped=g_post, lr=rec.lr, skipped=rec.skipped,
                      skip_reason=rec.skip_reason, grad_norm=grad_norm, param_norm=param_norm,
                      update_ratio=update_ratio, nonfinite_grad=nfg, nonfinite_param=nfp,
                      out_grad_norm=outg, out_grad_rms=outr, act_std=act[:, 0], dead_frac=act[:, 1],
                      sat_frac=act[:, 2], time_grad=time_grad, origin=origin, full=rec.detail, info=info)
    return stats, Measured(grads=bool(rec.post), clipped=rec.clipped, out_grad=out_has, act=act_has)


def _num(x):
    return None if x is None else float(x)


def step_row(s: StepStats, m: Measured, seconds: float) -> dict:
    """The run store's ``steps`` row of one step (NULL, None, where nothing was measured)."""
    nfc = int(np.maximum(s.nonfinite_grad, 0).sum()) if (s.nonfinite_grad >= 0).any() else None
    return {"step": s.step, "loss": _num(s.loss), "lr": _num(s.lr), "skipped": int(s.skipped),
            "nonfinite_count": nfc, "time": seconds,
            "global_grad_norm": None if not m.grads else s.global_grad_norm,
            "global_grad_norm_clipped": s.global_grad_norm_clipped if m.clipped else None}


def layer_block(steps: Sequence[tuple[StepStats, Measured]]) -> LayerBlock:
    """The run store's ``layer_stats`` rows of ``steps``, as one :class:`LayerBlock`.

    NULL where nothing was measured; a layer with nothing measured gets no row. A recurrent
    layer's row on a step that measured its per-time-step gradient norms (detail steps)
    carries them (the store keeps them in its ``time_grads`` table). Steps with the same
    number of layers (all of them, unless the model grew) are stacked and masked together.
    """
    blocks, run = [], []
    for item in steps:
        if run and len(item[0].layers) != len(run[0][0].layers):
            blocks.append(_block(run))
            run = []
        run.append(item)
    if run:
        blocks.append(_block(run))
    return LayerBlock.concat(blocks)


def _block(steps: Sequence[tuple[StepStats, Measured]]) -> LayerBlock:
    """:func:`layer_block` of steps with one layer count ``L``: ``(n, L)`` stacks, one mask."""
    n, L = len(steps), len(steps[0][0].layers)
    col = COLUMN_INDEX

    def stack(get) -> np.ndarray:
        return np.stack([get(s, m) for s, m in steps]).reshape(n * L)

    values = np.empty((n * L, len(col)))
    measured = np.empty((n * L, len(col)), dtype=bool)
    grad, nfg = stack(lambda s, m: s.grad_norm), stack(lambda s, m: s.nonfinite_grad)
    ratio = stack(lambda s, m: s.update_ratio)
    act = stack(lambda s, m: m.act)
    for name, v, meas in (
            ("grad_norm", grad, np.isfinite(grad) | (nfg > 0)),
            ("param_norm", stack(lambda s, m: s.param_norm), stack(lambda s, m: s.nonfinite_param) >= 0),
            ("update_ratio", ratio, np.isfinite(ratio)),
            ("nonfinite", nfg, nfg >= 0),
            ("out_grad_norm", stack(lambda s, m: s.out_grad_norm), stack(lambda s, m: m.out_grad)),
            ("act_std", stack(lambda s, m: s.act_std), act)):
        values[:, col[name]] = v
        measured[:, col[name]] = meas
    for name in ("dead_frac", "sat_frac"):
        v = stack(lambda s, m, name=name: getattr(s, name))
        values[:, col[name]] = v
        measured[:, col[name]] = act & np.isfinite(v)
    keep = measured.any(axis=1)
    series = {}
    for k, (s, _) in enumerate(steps):
        if s.time_grad:
            index = s.layers.position
            for name, v in s.time_grad.items():
                if name in index:
                    series[k * L + index[name]] = v
                    keep[k * L + index[name]] = True
    rows = np.flatnonzero(keep)
    step = np.repeat(np.fromiter((s.step for s, _ in steps), dtype=np.int64, count=n), L)[rows]
    layer = np.tile(np.arange(L, dtype=np.int64), n)[rows]
    new = {int(r): k for k, r in enumerate(rows.tolist())}
    return LayerBlock(step, layer, values[rows], measured[rows], {new[r]: v for r, v in series.items()})
