"""The watcher's device-side instruments: what a logged step measures, queued without a host sync.

Every measurement here starts as a device tensor and is queued on the step's
:class:`~gradhealth.watch._record.StepRecord` as a typed pending item; the read-back
(:mod:`gradhealth.watch._readback`) moves them to the host later, all at once.

* gradient norms at the optimizer's pre-hook (one fused ``torch._foreach_norm`` per
  device/dtype group) and the four-entry gradient *fingerprints* that tell the clip
  coefficient (:meth:`Instruments.measure_grads`);
* on detail steps: parameter norms and update norms around the optimizer step
  (:meth:`Instruments.measure_params`, :meth:`Instruments.finish_updates`), and the per-layer
  forward hooks -- activation statistics, output-gradient norms, per-time-step gradients of
  recurrent layers (:meth:`Instruments.install_layer_hooks`).

Clipping: the gradients at the optimizer's pre-hook are the ones applied (after any clipping
or AMP unscaling the user did). To also report the norm *before* clipping, the watcher
samples four entries of each gradient at the end of the backward pass and again at the
pre-hook: a clip by global or per-layer norm scales each tensor uniformly, so the ratio of
the samples is that tensor's clip coefficient, and the pre-clip norm is the applied norm
divided by it (exact for norm clipping, an estimate for element-wise value clipping).

Sampling the fingerprints (the cost on models with many small tensors): one ``torch.take``
per gradient, twice a logged step, costs more host time than the fused norm itself on a
model of hundreds of small tensors. So the watcher fingerprints *every* gradient only until
the clip coefficients have been uniform across all tensors (no clipping, a global-norm clip,
AMP unscaling) for :data:`SAMPLE_AFTER` logged steps in a row; from then on it fingerprints
:data:`SAMPLE_SIZE` tensors a logged step -- half of them a window that rotates over all the
parameters (every tensor is sampled once every ``ceil(n / 8)`` logged steps), half the
tensors with the largest applied norms at the previous logged step (a tensor clipped by its
own or its layer's norm has the largest applied norm: it sits at the threshold) -- and
applies their common coefficient to every other tensor. Any sign that the coefficient is
not common (two sampled tensors disagree, a tensor's four samples disagree as with value
clipping, no sample at all, two optimizers) switches back to full fingerprints from the next
logged step on, and that step's unsampled tensors are reported unclipped
(``clip_exact`` False). The trade-off: per-layer or value clipping that starts after
sampling began is caught within a few logged steps (the next one for norm clipping of the
largest tensors, at worst ``ceil(n / 8)`` for a tensor that is neither large nor in the
window), not at once; until then the pre-clip norms of the clipped tensors that were not
sampled read as their applied norms. Models with at most :data:`SAMPLE_SIZE` gradient
tensors are always fingerprinted in full. bf16/fp16 gradients under a clip round the
coefficient per tensor beyond the uniformity tolerance and so stay fingerprinted in full.

Version counters instead of fingerprints: an in-place change of a tensor (``clip_grad_norm_``'s
``_foreach_mul_``, ``clamp_``, ``copy_``) moves its ``_version`` counter, and assigning a new
``p.grad`` replaces the object. So at the end of the backward the watcher also keeps each
gradient and its counter; when, for :data:`TRUST_AFTER` logged steps in a row, no gradient was
replaced or changed in place before the optimizer step (no clipping at all: the usual run), the
counters stand in for the fingerprints: a logged step then costs one list of counters, and
fingerprints are taken again every :data:`RECHECK_EVERY` logged steps and from the step after
any counter moves. The first step whose counters moved without fingerprints reports its
applied norms as the pre-clip ones (``clip_exact`` False; one logged step, reading low, never
high). Writes the counters do not see (through ``p.grad.data``, or AMP's in-place unscale
kernel) show in the fingerprints of the first steps, and the watcher then fingerprints for the
rest of the run; such writes starting later are seen at the next recheck. FSDP2 (DTensor)
gradients are always fingerprinted, and so are models of more than :data:`VERSIONS_UP_TO`
gradient tensors (there a list of counters, ~0.3-0.5 us a tensor, costs more than the
sampled fingerprints).

Every hook an instrument registers goes through :func:`shielded`: it does nothing once the
watcher is removed or while a forensic replay runs, and an exception inside it becomes one
``internal`` event instead of reaching the training loop.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..stats.tensors import dense_values, global_norms, is_dtensor, local, tensor_norms
from ._compile import named_buffers
from ._record import ActStats, ClipSamples, GradNorms, LossScale, OutGrad, ParamNorms, StepRecord, TimeGrad, UpdateNorms
from .hooks import CopyInertHook, HookSet, LayerMap, act_stats
from .replay import tensor_leaves

__all__ = ["Instruments", "shielded", "hook_method", "SAMPLE_AFTER", "SAMPLE_SIZE", "TRUST_AFTER", "RECHECK_EVERY",
           "VERSIONS_UP_TO"]

SAMPLE_AFTER = 3    # logged steps with one clip coefficient for every tensor before sampling
SAMPLE_SIZE = 16    # tensors fingerprinted per logged step while sampling (half rotating, half largest)
TRUST_AFTER = 3     # logged steps with untouched gradients before the version counters stand in
RECHECK_EVERY = 16  # while they do, fingerprints again every this many logged steps
VERSIONS_UP_TO = 512   # gradient tensors; beyond, a list of counters costs more than sampled fingerprints


class Host(Protocol):
    """What an instrument needs from the watcher that owns it."""

    config: Any
    _map: LayerMap
    _iter_hooks: HookSet

    def _live(self) -> bool: ...
    def _internal(self, site: str, exc: BaseException) -> None: ...
    def _get_record(self) -> StepRecord: ...


def shielded(host: Host, site: str, fn: Callable) -> Callable:
    """``fn`` as a hook: a no-op unless ``host._live()``; an exception becomes
    ``host._internal(site, exc)`` and the hook returns None (training goes on)."""

    def hook(*args, **kwargs):
        if not host._live():
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            host._internal(site, exc)
            return None

    return hook


def hook_method(site: str, passthrough: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorator: the method version of :func:`shielded` (``self`` is the host). Exceptions of
    the ``passthrough`` types propagate (the ``"raise"`` policy's NonFiniteError)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            if not self._live():
                return None
            try:
                return fn(self, *args, **kwargs)
            except passthrough:
                raise
            except Exception as exc:
                self._internal(site, exc)
                return None

        return method

    return deco


def norms(tensors: list[torch.Tensor], sharded: bool = False) -> torch.Tensor:
    """Per-tensor 2-norms (float32, on the first tensor's device), fused per device/dtype;
    with ``sharded`` (the model has DTensor parameters, FSDP2) the norm of a sharded tensor is
    the whole tensor's (one all_reduce) -- otherwise no per-tensor DTensor test on the hot path."""
    return global_norms(tensors) if sharded else tensor_norms(tensors)


class Instruments:
    """The measurements of one watcher (see the module docstring)."""

    def __init__(self, host: Host):
        self._host = host
        self._idx_cache: dict[tuple, torch.Tensor] = {}
        self._argmax: set[int] = set()        # positions sampled at their largest entry (see fingerprint)
        self._peak: dict[int, torch.Tensor] = {}   # their sample indices at this step
        self._uniform_streak = 0               # logged steps in a row with one common clip coefficient
        self._rotate = 0                       # start of the rotating window of sampled tensors
        self._clip_rec: StepRecord | None = None   # the last record whose fingerprints were taken
        self._top: list[int] = []              # positions of the largest applied norms (last logged step)
        self._pos_cache: tuple[list | None, list[int]] = (None, [])   # (param list, its positions)
        self._untouched = 0                    # logged steps in a row whose gradients nothing changed
        self._since_fp = 0                     # logged steps since the last fingerprints
        self._blind = False                    # gradients changed behind the version counters (.data)
        self._ver_rec: StepRecord | None = None   # the last record whose version counters were taken
        self.depth_seen: dict[int, int] = {}   # layer index -> order of its first forward (detail steps)
        # buffers already non-finite when the watch began hold it by design (a causal mask of
        # -inf, a quantisation observer's +-inf bounds): never reported
        self.buffer_baseline: set[str] = set()
        try:
            named = self._float_buffers()
            self.buffer_baseline = {named[i][0] for i in self._nonfinite(named)}
        except Exception:   # (a buffer of an exotic tensor type: report against no baseline)
            pass
        self.depth_known = False               # the forward order is fixed after the first detail step
        self._after_conv = False
        self._ident: list[int] = []

    # ------------------------------------------------------------------ gradients

    def fingerprint(self, params, at_end: bool = False) -> tuple[list, list[int], torch.Tensor | None]:
        """Four entries of each dense gradient (flat positions 0, n/3, 2n/3, n-1).

        A gradient whose four entries were all zero at an earlier step (an embedding whose
        batches touch a few rows: no coefficient can be read from zeros) is sampled at its
        largest entry instead of the first, found on the device at the end of the backward
        (``at_end``) and sampled at the same place at the pre-hook.

        Returns ``(params sampled, their positions, samples)``; ``samples`` is float32, of
        length ``4 * len(params)``, on the first gradient's device.
        """
        plist, pos_l, parts = [], [], []
        ppos = self._host._map.param_pos
        cache = self._idx_cache
        strided, f32 = torch.strided, torch.float32
        dev = None
        sharded = self._host._map.sharded
        for p in params:
            g = p.grad
            if sharded and g is not None and is_dtensor(g):
                g = g.to_local()   # this rank's shard: sampled before and after, like any tensor
            if g is None or g.layout != strided:
                continue
            n = g.numel()
            if n == 0:
                continue
            gdev = g.device
            idx = cache.get((n, gdev))
            if idx is None:
                idx = torch.tensor([0, n // 3, (2 * n) // 3, n - 1], dtype=torch.long, device=gdev)
                cache[(n, gdev)] = idx
            pos = ppos[id(p)]
            if self._argmax and pos in self._argmax:
                idx = self._peak_index(pos, g, idx, at_end)
            sm = torch.take(g, idx)
            if dev is None:
                dev = gdev
            elif gdev != dev:
                sm = sm.to(dev, non_blocking=True)
            parts.append(sm if sm.dtype == f32 else sm.float())
            plist.append(p)
            pos_l.append(pos)
        return plist, pos_l, (torch.cat(parts) if parts else None)

    def _peak_index(self, pos: int, g: torch.Tensor, idx: torch.Tensor, at_end: bool) -> torch.Tensor:
        """``idx`` with its first entry moved to ``g``'s largest |entry| (found at the end of
        the backward, kept for the pre-hook's samples of the same step)."""
        if at_end or pos not in self._peak:
            top = torch.argmax(g.detach().abs().reshape(-1)).reshape(1)
            self._peak[pos] = torch.cat([top, idx[1:]])
        return self._peak[pos]

    def _sampling(self, rec: StepRecord) -> bool:
        """Whether this logged step fingerprints a subset (see the module docstring): the
        previous fingerprinted step's coefficients decide."""
        prev = self._clip_rec
        if prev is not None and prev is not rec:   # (a second backward of one step: no news)
            self._clip_rec = None
            if prev.clip_blind:   # all-zero samples: their largest entry from now on
                self._argmax.update(prev.clip_blind)
            if prev.clip_uniform:
                self._uniform_streak += 1
                if prev.post:
                    pos = np.fromiter(prev.post.keys(), dtype=np.int64, count=len(prev.post))
                    val = np.fromiter(prev.post.values(), dtype=float, count=len(prev.post))
                    k = min(SAMPLE_SIZE // 2, len(val))
                    val = np.where(np.isfinite(val), val, -1.0)
                    self._top = pos[np.argpartition(-val, k - 1)[:k]].tolist() if k else []
            else:
                self._uniform_streak = 0
        return self._uniform_streak >= SAMPLE_AFTER and len(self._host._map.params) > SAMPLE_SIZE

    def _subset(self) -> list:
        """The parameters to fingerprint while sampling: the largest applied norms of the
        previous logged step, then a window rotating over all the parameters."""
        params = self._host._map.params
        n = len(params)
        chosen = [params[i] for i in self._top if i < n]
        seen = {id(p) for p in chosen}
        i = self._rotate
        for _ in range(n):
            if len(chosen) >= SAMPLE_SIZE:
                break
            p = params[i]
            i = (i + 1) % n
            if id(p) not in seen:
                chosen.append(p)
        self._rotate = i
        return chosen

    def backward_end(self, rec: StepRecord) -> None:
        """At the end of the backward pass: the version counters and, unless they stand in,
        the fingerprint (and the loss scale) to compare with the optimizer's pre-hook, where a
        clip shows as a uniform rescale."""
        self._judge(rec)
        params = self._host._map.params
        counters = not self._host._map.sharded and len(params) <= VERSIONS_UP_TO
        if counters:
            grads = [p.grad for p in params]
            rec.versions = (grads, [-1 if g is None else g._version for g in grads])
        if not counters or self._blind or self._untouched < TRUST_AFTER or self._since_fp >= RECHECK_EVERY:
            rec.fp_sampled = self._sampling(rec)
            rec.fp_end = self.fingerprint(self._subset() if rec.fp_sampled else params, at_end=True)
            self._clip_rec = rec
            self._since_fp = 0
        elif self._ver_rec is not rec:
            self._since_fp += 1
        self._ver_rec = rec
        scaler = self._host.config.scaler
        if scaler is not None and getattr(scaler, "_scale", None) is not None and scaler.is_enabled():
            rec.scale_end = scaler._scale.detach().clone().float().reshape(1)

    def _judge(self, rec: StepRecord) -> None:
        """What the previous logged step's gradients went through between the end of its
        backward and its optimizer step: nothing (the version counters may stand in for the
        fingerprints after :data:`TRUST_AFTER` such steps), a change the counters saw (a clip,
        AMP unscaling), or a change only the fingerprints saw (writes through ``.data``:
        fingerprints for the rest of the run)."""
        prev = self._ver_rec
        if prev is None or prev is rec:
            return
        self._ver_rec = None
        if prev.touched is None:
            return   # never reached an optimizer step
        if prev.touched:
            self._untouched = 0
        elif prev.fp_changed:
            self._blind = True
        else:
            self._untouched += 1

    def _touched(self, rec: StepRecord, cur: list, pos: list[int]) -> None:
        """Whether a gradient (``cur``: the gradients about to be applied, at positions ``pos``)
        was replaced or changed in place since the end of the backward (its version counter
        moved); records without fingerprints that were touched report their applied norms as
        the pre-clip ones (``clip_exact`` False)."""
        grads, vers = rec.versions
        if len(grads) != len(self._host._map.params):
            touched = True   # the model changed structure since the backward
        else:
            if len(pos) == len(grads) and pos == self._identity(len(pos)):
                then, was = grads, vers   # every parameter, in order (the usual case): no gather
            else:
                then, was = [grads[k] for k in pos], [vers[k] for k in pos]
            touched = not all(map(operator.is_, cur, then)) or [g._version for g in cur] != was
        rec.touched = touched or bool(rec.touched)
        if touched and rec.fp_end is None:
            rec.clip_exact = False

    def _identity(self, n: int) -> list[int]:
        """``list(range(n))``, kept (compared with ``==``: one C-level pass)."""
        ident = self._ident
        if len(ident) != n:
            ident = self._ident = list(range(n))
        return ident

    def measure_grads(self, rec: StepRecord, params: list[torch.Tensor], opt=None) -> None:
        """Queue the norms of the gradients about to be applied, and the clip samples."""
        grads = [g for p in params if (g := p.grad) is not None]   # (one read of each .grad)
        if not grads:
            return
        withg = params if len(grads) == len(params) else [p for p in params if p.grad is not None]
        # GradScaler hands fused optimizers (fused Adam/AdamW/SGD) still-scaled gradients and
        # sets opt.grad_scale; unscale here (on device, no sync) so the numbers are the real ones
        # and the scale is not mistaken for clipping
        gs = getattr(opt, "grad_scale", None)
        unscale = gs if isinstance(gs, torch.Tensor) else None
        pos = self._positions(params, withg)
        n = norms(grads, self._host._map.sharded)
        if unscale is not None:
            n = n / unscale.to(n.device, n.dtype)
        rec.pending.append(GradNorms(n, positions=pos))
        if rec.versions is not None:
            self._touched(rec, grads, pos)
        if rec.fp_end is not None and rec.fp_end[2] is not None:
            self._clip_samples(rec, withg, unscale, pos)

    def _positions(self, params: list, withg: list) -> list[int]:
        """The positions of ``withg`` (``params`` with a gradient), cached while every
        parameter of the (cached, per optimizer) list ``params`` has one."""
        cached_for, cached = self._pos_cache
        if len(withg) == len(params) and cached_for is params:
            return cached
        ppos = self._host._map.param_pos
        pos = [ppos[id(p)] for p in withg]
        if len(withg) == len(params):
            self._pos_cache = (params, pos)
        return pos

    def _clip_samples(self, rec: StepRecord, withg: list[torch.Tensor], unscale, pos: list[int]) -> None:
        fparams, fpos, samples = rec.fp_end
        mine = {id(p) for p in withg}
        if rec.fp_sampled:
            keep = [k for k, p in enumerate(fparams) if id(p) in mine]
            if len(keep) == len(fparams):
                sub, end = fparams, samples
            else:
                sub = [fparams[k] for k in keep]
                sel = torch.tensor([4 * k + j for k in keep for j in range(4)], dtype=torch.long,
                                   device=samples.device)
                end = samples.index_select(0, sel)
        elif len(fparams) == len(withg) and all(id(p) in mine for p in fparams):
            sub, end = fparams, samples           # the usual case: one optimizer, same grads
        else:
            keep = [k for k, p in enumerate(fparams) if id(p) in mine]
            sub = [fparams[k] for k in keep]
            sel = torch.tensor([4 * k + j for k in keep for j in range(4)], dtype=torch.long,
                               device=samples.device)
            end = samples.index_select(0, sel)
        cparams, cpos, cur = self.fingerprint(sub)
        if cur is not None and unscale is not None:
            cur = cur / unscale.to(cur.device, cur.dtype)
        if cur is not None and len(cparams) == len(sub):
            rest = pos if rec.fp_sampled else None   # while sampling: the common coefficient's positions
            rec.pending.append(ClipSamples(torch.cat([end, cur.to(end.device)]), positions=cpos, rest=rest))
            if rec.scale_end is not None:
                rec.pending.append(LossScale(rec.scale_end))

    def count_nonfinite(self, rec: StepRecord) -> None:
        """Exact NaN/Inf counts, only for gradients whose norm came back non-finite (slow path,
        after the read-back)."""
        bad = rec.nonfinite_unknown()
        if bad:
            params = self._host._map.params
            for p in bad:
                g = params[p].grad
                if g is None:
                    rec.nf[p] = 0
                    continue
                v = dense_values(local(g)).detach()
                rec.nf[p] = int(torch.logical_not(torch.isfinite(v)).sum())
                rec.nf_bad += rec.nf[p] > 0
                if rec.nf[p] == 0 and math.isinf(rec.post[p]):
                    # finite entries whose float32 sum of squares overflowed: the true norm, in
                    # float64 (any finite float32/bf16/fp16 gradient fits), and a mark
                    rec.post[p] = float(torch.linalg.vector_norm(v, dtype=torch.float64))
                    rec.overflow.add(p)
        if not rec.nf:
            rec.nf = dict.fromkeys(rec.post, 0)
        elif len(rec.nf) != len(rec.post):
            for p in rec.post:
                rec.nf.setdefault(p, 0)

    def nonfinite_after_step(self, opt) -> tuple[list[tuple[int, str]], list[str]]:
        """What holds NaN/Inf after ``opt``'s step, in one fused reduction per device/dtype and
        one host read (detail steps and bad steps only):

        * ``(parameter position, state key)`` of every optimizer-state tensor (Adam's
          ``exp_avg_sq`` after an overflowing step);
        * the names of the model's floating-point buffers that were finite when the watch began
          (BatchNorm's running statistics after a batch of huge values: the gradients stay
          finite, training mode uses the batch's own statistics, and only ``model.eval()``
          shows it).
        """
        ppos = self._host._map.param_pos
        items = [(ppos[id(p)], k, v) for p, st in opt.state.items() if id(p) in ppos
                 for k, v in st.items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() and v.dim()]
        bufs = [(n, b) for n, b in self._float_buffers() if n not in self.buffer_baseline]
        bad = self._nonfinite([*((k, v) for _, k, v in items), *bufs])
        n = len(items)
        return ([items[i][:2] for i in bad if i < n], [bufs[i - n][0] for i in bad if i >= n])

    def _float_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, b) for name, b in named_buffers(self._host.model)
                if isinstance(b, torch.Tensor) and b.is_floating_point() and b.numel()]

    @staticmethod
    def _nonfinite(named: list) -> list:
        """Indices into ``named`` (``(name, tensor)`` pairs) of the tensors holding NaN/Inf: one
        fused max-|entry| reduction per device/dtype, in float64 so that no finite float64 value
        reads as inf (MPS has no float64), and one host read."""
        if not named:
            return []
        vals = [local(t) for _, t in named]
        wide = torch.float32 if any(v.device.type == "mps" for v in vals) else torch.float64
        finite = torch.isfinite(tensor_norms(vals, math.inf, dtype=wide)).tolist()
        return [i for i, ok in enumerate(finite) if not ok]

    # ------------------------------------------------------------------ parameters and updates

    def measure_params(self, rec: StepRecord, opt, params: list[torch.Tensor]) -> None:
        """Detail steps: parameter norms now, and a copy of the parameters the optimizer is
        about to update (the update norm is taken at its post-hook)."""
        if not params:
            return
        ppos = self._host._map.param_pos
        rec.pending.append(ParamNorms(norms(params, self._host._map.sharded), positions=[ppos[id(p)] for p in params]))
        if self._host.config.update_ratio:
            upd = [p for p in params if p.grad is not None]
            if upd:
                with torch.no_grad():
                    before = [p.detach().clone() for p in upd]
                rec.upd_buffers[id(opt)] = (upd, before)

    def finish_updates(self, rec: StepRecord | None, opt) -> None:
        """At the optimizer's post-hook: queue ``|p_before - p_after|`` per parameter."""
        if rec is None or id(opt) not in rec.upd_buffers:
            return
        params, before = rec.upd_buffers.pop(id(opt))
        torch._foreach_sub_(before, [p.detach() for p in params])
        ppos = self._host._map.param_pos
        rec.pending.append(UpdateNorms(norms(before, self._host._map.sharded), positions=[ppos[id(p)] for p in params]))

    # ------------------------------------------------------------------ detail-step layer hooks

    def install_layer_hooks(self) -> None:
        """Forward pre/post hooks on every layer, for this iteration only."""
        self.depth_seen = {}
        self._after_conv = False
        host = self._host
        t = host._map.table
        for i, mod in enumerate(host._map.modules):
            host._iter_hooks.add(mod.register_forward_pre_hook(CopyInertHook(
                shielded(host, "layer forward", self._layer_pre(i)))))
            host._iter_hooks.add(mod.register_forward_hook(CopyInertHook(
                shielded(host, "layer forward", self._layer_post(i, t.families[i], t.activations[i])))))

    def _layer_pre(self, i: int):
        host = self._host
        recurrent = host._map.table.roles[i] == "recurrent" and isinstance(host._map.modules[i], nn.RNNBase)

        def pre(mod, args):
            if i not in self.depth_seen:
                self.depth_seen[i] = len(self.depth_seen)
            if recurrent and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                x = args[0]
                if not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                bf = getattr(mod, "batch_first", False)
                tdim = 0 if (x.dim() == 2 or not bf) else 1
                host._iter_hooks.add(x.register_hook(shielded(host, "layer backward", self._time_hook(i, tdim))))
                if x is not args[0]:
                    return (x,) + tuple(args[1:])
            return None
        return pre

    def _time_hook(self, i: int, tdim: int):
        def hook(g):
            gf = g.detach().float()
            dims = [d for d in range(gf.dim()) if d != tdim]
            sq = gf.square().sum(dim=dims) if dims else gf.square()
            self._host._get_record().pending.append(TimeGrad(sq, layer=i))
        return hook

    def _layer_post(self, i: int, family: str, act: str):
        host = self._host
        is_conv = host._map.conv[i] if i < len(host._map.conv) else False
        role = host._map.table.roles[i]

        def post(mod, args, out):
            if role != "activation":
                self._after_conv = is_conv
            t = out
            if not isinstance(t, torch.Tensor):
                leaves = tensor_leaves(out)
                t = leaves[0] if leaves else None
            if t is None or not t.is_floating_point():
                return None
            rec = host._get_record()
            if host.config.forward_stats:
                rec.pending.append(ActStats(act_stats(t, mod, family, act, self._after_conv), layer=i))
            if t.requires_grad:
                hook = shielded(host, "layer backward", self._outgrad_hook(i, t.numel()))
                host._iter_hooks.add(t.register_hook(hook))
            return None
        return post

    def _outgrad_hook(self, i: int, n: int):
        def hook(g):
            # (float32 at least; a float64 gradient is reduced in float64: the norm refuses to narrow)
            acc = torch.float64 if g.dtype == torch.float64 else torch.float32
            sq = torch.linalg.vector_norm(g.detach(), dtype=acc).square().reshape(1)
            self._host._get_record().pending.append(OutGrad(sq, layer=i, n=n))
        return hook
