"""The Watcher: per-layer statistics while a model trains, detectors, guard, forensic replay.

How a step is observed
----------------------
``watch(model, optimizer)`` registers, and only these in the steady state:

* a forward pre-hook and a forward hook on the **root module** (iteration boundaries, the
  references kept for forensic replay, and a tensor hook on the model's output that keeps
  the loss's gradient w.r.t. it and marks the end of the backward pass);
* an optimizer **step pre-hook and post-hook** on each optimizer (global optimizer hooks
  instead when no optimizer is given, adopting the first optimizer that steps the model's
  parameters).

On a *logged* step (schedule ``every``) the pre-hook reduces the gradients it is about to
see applied: one fused ``torch._foreach_norm`` per (device, dtype) group, read back to the
host once. On a *detail* step (schedule ``detail_every``, always including step 0) the
watcher also registers, for that step only, forward hooks on every layer (forward statistics
and a tensor hook on each layer output for the output-gradient norm, per time step for
recurrent layers), measures parameter norms and, around the optimizer step, the update
norms. Everything else is a counter increment.

Clipping: the gradients at the optimizer's pre-hook are the ones applied (after any clipping
or AMP unscaling the user did). To also report the norm *before* clipping, the watcher
samples four entries of each gradient at the end of the backward pass and again at the
pre-hook: a clip by global or per-layer norm scales each tensor uniformly, so the ratio of
the samples is that tensor's clip coefficient, and the pre-clip norm is the applied norm
divided by it (exact for norm clipping, an estimate for element-wise value clipping).

Steps and iterations: step ``s`` is the ``s``-th training iteration (0-based). An iteration
ends when the model is called again after an optimizer step, when the primary (first)
optimizer steps twice without a forward in between, or when an AMP GradScaler's ``update()``
ran (then the iteration is recorded as skipped if the optimizer did not step). A step the
guard or the scaler skipped still counts, so step numbers follow the training loop.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections import deque
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..detectors.base import Detector, LayerTable, StepStats, safe_text
from ..errors import ModelError, NonFiniteError, ParameterError
from ..events import Event
from . import guard as _guard
from ._assemble import forward_depth, model_info, step_stats, store_rows
from ._readback import ReadbackQueue
from ._record import ActStats, ClipSamples, GradNorms, LossScale, OutGrad, ParamNorms, StepRecord, TimeGrad, UpdateNorms
from .config import OnNonFinite, RollbackStorage, ScheduleLike, WatchConfig, default_detail_schedule
from .hooks import CopyInertHook, HookSet, LayerMap, WeakMethodHook, act_stats, discover_layers
from .replay import Capture, ReplayReport, replay_step

__all__ = ["Watcher", "watch", "WatchWarning", "default_detail_schedule"]

_OWNER = "gradhealth.watch"
_DATA_REMEDY = ("# the batch itself holds NaN/Inf: check the data pipeline, e.g. "
                "assert torch.isfinite(x).all() before model(x)")

# Active watchers (weak): a second watcher on the same parameters is an error.
_ACTIVE: list[weakref.ref] = []


class WatchWarning(UserWarning):
    """Something the watcher found, or could not do, while training went on."""


def _stats_tensors():
    try:
        from ..stats import tensor_norms  # the probe pillar's fused reductions

        return tensor_norms
    except Exception:  # pragma: no cover - stats is part of the package
        return None


_tensor_norms = _stats_tensors()


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor 2-norms (float32, on the first tensor's device), fused per device/dtype."""
    if _tensor_norms is not None:
        return _tensor_norms(tensors)
    return torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])


def _dense_values(g: torch.Tensor) -> torch.Tensor:
    if g.layout == torch.strided:
        return g
    if g.is_sparse:
        return g.coalesce().values()
    return g.values()


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ParameterError("model", _OWNER, "a torch.nn.Module", type(model).__name__,
                             "pass the model itself, e.g. gradhealth.watch(model, optimizer).")


class Watcher:
    """Watches a model while it trains. Create it with :func:`watch`; see there for arguments.

    Attributes:
        events: every :class:`~gradhealth.events.Event` so far (detectors, guard, replay,
            internal errors), in order.
        history: the last ``history_size`` logged steps as :class:`StepStats`.
        replays: every :class:`~gradhealth.watch.replay.ReplayReport` so far.
        step: the current training step (0-based).
        layers: the :class:`~gradhealth.detectors.LayerTable` of the model.
        store: the run store when ``run_dir`` was given, else None.
    """

    def __init__(self, model: nn.Module, optimizer=None, config: WatchConfig | None = None, **options):
        _check_model(model)
        if config is None:
            config = WatchConfig(**options)
        elif options:
            raise ParameterError("config", "Watcher", "a WatchConfig or keyword options, not both",
                                 f"a WatchConfig and {sorted(options)}",
                                 "pass Watcher(model, optimizer, WatchConfig(...)) or gradhealth.watch(...).")
        self.config = config
        opts = [] if optimizer is None else (list(optimizer) if isinstance(optimizer, (list, tuple))
                                             else [optimizer])
        for o in opts:
            if not (hasattr(o, "param_groups") and hasattr(o, "step")):
                raise ParameterError("optimizer", _OWNER, "a torch.optim.Optimizer, a list of them, or None",
                                     type(o).__name__, "pass the optimizer that steps the model.")

        self.model = model
        self._detector = config.detectors
        self._det_state = self._detector.init()
        self.events: list[Event] = []
        self.history: deque[StepStats] = deque(maxlen=config.history_size)
        self.replays: list[ReplayReport] = []
        self.step = 0
        self._active = False
        self._map: LayerMap = discover_layers(model)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._check_overlap()
        mine = self._map.param_pos
        for o in opts:
            if not any(id(p) in mine for g in o.param_groups for p in g["params"]):
                raise ParameterError("optimizer", _OWNER, "an optimizer over parameters of the watched model",
                                     f"{type(o).__name__} with none of them",
                                     "pass the optimizer built from model.parameters().")

        self._hooks = HookSet()        # permanent (until remove)
        self._iter_hooks = HookSet()   # this iteration only (detail module hooks, tensor hooks)
        self._optimizers: list[Any] = []
        self._opt_ids: set[int] = set()
        self._rejected: set[int] = set()
        self._opt_cache: dict[int, tuple] = {}
        self._guards: dict[int, Any] = {}
        self._global_hooks = optimizer is None
        self._record: StepRecord | None = None
        self._pending_loss: tuple[int, Any] | None = None  # observe() on an unlogged step
        self._captures: list[Capture] = []
        self._stepped = False
        self._primary_stepped = False
        self._fwd_in_iter = False
        self._bwd_queued = False
        self._module_hooks_on = False
        self._in_replay = False
        self._depth_seen: dict[int, int] = {}
        self._depth_known = False
        self._after_conv = False
        self._internal_sites: dict[str, int] = {}
        self._scaler_states = None
        self._snapshot: _guard.Snapshot | None = None
        self._skipped_total = 0
        self._t0 = time.time()
        self._idx_cache: dict[tuple, torch.Tensor] = {}
        self._info = model_info(self._map.table)
        self._replayed_steps: set[int] = set()
        self._readback = ReadbackQueue()
        self._nf_active = False

        self.store = None
        self.run_dir = Path(config.run_dir) if config.run_dir is not None else None
        if config.run_dir is not None:
            self._open_store(config.run_dir, config.meta)

        self._attach(opts)

    # ------------------------------------------------------------------ public API

    @property
    def on_nonfinite(self) -> str:
        """The non-finite policy (``config.on_nonfinite``)."""
        return self.config.on_nonfinite

    @property
    def layers(self) -> LayerTable:
        return self._map.table

    @property
    def active(self) -> bool:
        """Whether the watcher is attached (False after :meth:`remove`)."""
        return self._active

    @property
    def optimizers(self) -> list:
        return list(self._optimizers)

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"Watcher({type(self.model).__name__}, step={self.step}, layers={len(self.layers)}, "
                f"events={len(self.events)}, on_nonfinite={self.on_nonfinite!r}, "
                f"{'active' if self._active else 'removed'})")

    def observe(self, loss) -> None:
        """Record the loss of the current step (enables loss-spike detection).

        Call it once per step, before or after ``optimizer.step()``; the value is read back
        with the step's other statistics (no extra sync), and only on logged steps.

        Args:
            loss: a scalar: a tensor with one element or a Python/NumPy number.

        Raises:
            ParameterError: ``loss`` is not a scalar.
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ParameterError("loss", "Watcher.observe", "a scalar (a tensor with one element or a float)",
                                     f"a tensor of shape {tuple(loss.shape)}",
                                     "pass the reduced loss, e.g. watcher.observe(loss) with "
                                     "loss = loss_fn(out, y) (reduction='mean'), or loss.mean().")
            value: Any = loss.detach().reshape(())
        else:
            try:
                import numbers

                if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                    raise TypeError
                value = float(loss)
            except (TypeError, ValueError):
                raise ParameterError("loss", "Watcher.observe", "a scalar (a tensor with one element or a float)",
                                     type(loss).__name__, "pass loss (a 0-dim tensor) or loss.item().") from None
        if not self._active:
            return
        try:
            step = self.step
            if not self._is_logged(step) and self._record is None:
                # not on the schedule, but the guard may still log this step (a skipped one
                # is the interesting one): keep a reference until the iteration ends
                self._pending_loss = (step, value)
                return
            rec = self._get_record()
            rec.loss = value
        except Exception as exc:  # pragma: no cover - defensive
            self._internal("observe", exc)

    def add_optimizer(self, optimizer) -> None:
        """Watch one more optimizer (one created after :func:`watch`, e.g. for fine-tuning)."""
        if not (hasattr(optimizer, "param_groups") and hasattr(optimizer, "step")):
            raise ParameterError("optimizer", "Watcher.add_optimizer", "a torch.optim.Optimizer",
                                 type(optimizer).__name__, "pass the optimizer itself.")
        self._adopt(optimizer, register=True)

    def remove(self) -> None:
        """Detach every hook (and the guard), finish the last step, flush and close the store.

        Idempotent. After it, no hook of gradhealth remains on the model, its tensors or the
        optimizers, and ``optimizer.step`` is the optimizer's own again.
        """
        if not self._active:
            return
        try:
            if self._stepped or (self._record is not None and (self._record.stepped or self._record.skipped)):
                self._end_iteration()
            else:
                self._clear_iteration()
            self._flush_deferred()
        except Exception as exc:
            self._internal("remove", exc)
        self._active = False
        self._iter_hooks.remove()
        self._hooks.remove()
        for g in self._guards.values():
            try:
                g.remove()
            except Exception:
                pass
        self._guards.clear()
        self._captures = []
        self._snapshot = None
        global _ACTIVE
        _ACTIVE = [r for r in _ACTIVE if r() is not None and r() is not self]
        if self.store is not None:
            try:
                self.store.write_meta({"steps": self.step, "skipped_steps": self._skipped_total,
                                       "n_events": len(self.events)})
                self.store.close()
            except Exception as exc:  # pragma: no cover - the store never raises by contract
                self._internal("store", exc)

    def summary(self) -> str:
        """A few plain-text lines: steps, skipped steps, and the events by kind."""
        kinds: dict[str, int] = {}
        for e in self.events:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        lines = [f"{self.step} steps watched, {self._skipped_total} skipped, {len(self.events)} events"]
        for e in self.events[:20]:
            where = f" [{safe_text(e.layer)}]" if e.layer else ""
            lines.append(f"  step {e.step}: {e.kind}{where}: {e.message}")
        if len(self.events) > 20:
            lines.append(f"  ... and {len(self.events) - 20} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ attaching

    def _check_overlap(self) -> None:
        mine = {id(p) for p in self._map.params}
        for ref in list(_ACTIVE):
            other = ref()
            if other is None or not other._active:
                continue
            theirs = {id(p) for p in other._map.params}
            if other.model is self.model or (mine & theirs):
                what = "this model" if other.model is self.model else "parameters of this model"
                raise ModelError(
                    f"gradhealth.watch: {what} is already watched by another active Watcher "
                    f"({type(other.model).__name__}, step {other.step}). Two watchers on the same "
                    "parameters would double every hook and disagree about steps. Fix: leave the first "
                    "`with gradhealth.watch(...)` block (or call watcher.remove()) before watching again.")

    def _state_tensors(self) -> list[torch.Tensor]:
        """What a rollback restores: the parameters and the buffers (BatchNorm running
        statistics are poisoned by a NaN batch in the forward pass, before any guard acts)."""
        return list(self._map.params) + [b for b in self.model.buffers()]

    def _attach(self, opts: list) -> None:
        self._active = True
        _ACTIVE.append(weakref.ref(self))
        m = self.model
        # weak and copy-inert: deepcopy(model) / torch.save(model) must not copy the Watcher
        self._hooks.add(m.register_forward_pre_hook(WeakMethodHook(self, "_on_root_pre"), with_kwargs=True))
        self._hooks.add(m.register_forward_hook(WeakMethodHook(self, "_on_root_post"), with_kwargs=True))
        for o in opts:
            self._adopt(o, register=True)
        if self._global_hooks:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            self._hooks.add(register_optimizer_step_pre_hook(self._on_global_pre))
            self._hooks.add(register_optimizer_step_post_hook(self._on_global_post))
        if self.config.scaler is not None:
            self._scaler_states = getattr(self.config.scaler, "_per_optimizer_states", None)
        if self.store is not None:
            self.store.write_layers(self._map.rows())

    def _adopt(self, opt, register: bool) -> bool:
        """Start watching ``opt`` if it holds parameters of the model."""
        if id(opt) in self._opt_ids:
            return True
        mine = self._map.param_pos
        if not any(id(p) in mine for g in opt.param_groups for p in g["params"]):
            if register:
                raise ParameterError("optimizer", _OWNER, "an optimizer over parameters of the watched model",
                                     f"{type(opt).__name__} with none of them",
                                     "pass the optimizer built from model.parameters().")
            self._rejected.add(id(opt))
            return False
        self._optimizers.append(opt)
        self._opt_ids.add(id(opt))
        if register:
            self._hooks.add(opt.register_step_pre_hook(self._on_pre_step))
            self._hooks.add(opt.register_step_post_hook(self._on_post_step))
        if self.config.on_nonfinite in ("skip", "rollback", "raise"):
            self._install_guard(opt)
        return True

    def _install_guard(self, opt) -> None:
        from ..remedies.guards import StepGuard

        limit = 0 if self.config.on_nonfinite == "raise" else self.config.max_consecutive_skips
        self._guards[id(opt)] = StepGuard(opt, max_consecutive_skips=limit,
                                          on_skip=lambda info, _o=opt: self._on_guard_skip(_o, info),
                                          model=self.model)

    def _open_store(self, run_dir, meta) -> None:
        try:
            from ..store import RunStore
        except Exception as exc:  # pragma: no cover - store is part of the package
            self._internal("store", exc)
            return
        self.store = RunStore(run_dir)
        c = self.config
        m = {"model": type(self.model).__name__, "started_at": time.time(), "on_nonfinite": c.on_nonfinite,
             "every": repr(c.every), "detail_every": repr(c.detail_every), "torch": torch.__version__,
             "n_layers": len(self._map.table), "n_params": int(sum(p.numel() for p in self._map.params)),
             "source": "gradhealth.watch"}
        try:
            from .. import __version__

            m["gradhealth"] = __version__
        except Exception:  # pragma: no cover
            pass
        if meta:
            m.update(meta)
        self.store.write_meta(m)

    # ------------------------------------------------------------------ faults

    def _internal(self, site: str, exc: BaseException) -> None:
        """Report an exception raised inside gradhealth's own code, once per site."""
        n = self._internal_sites.get(site, 0)
        self._internal_sites[site] = n + 1
        if n:
            return
        msg = (f"gradhealth's {site} hook failed ({type(exc).__name__}: {safe_text(exc)}); training "
               "continues, but the statistics that hook collects are missing from now on where it fails.")
        try:
            warnings.warn(msg, WatchWarning, stacklevel=3)
        except WatchWarning:
            raise
        except Exception:  # pragma: no cover
            pass
        ev = Event(step=self.step, kind="internal", layer=None, severity="warning", message=msg,
                   evidence={"site": site, "error": f"{type(exc).__name__}: {exc}"[:500]})
        self._emit([ev])

    def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        self.events.extend(events)
        if self.store is not None:
            try:
                self.store.append_events(events)
            except Exception:  # pragma: no cover - never raises by contract
                pass

    # ------------------------------------------------------------------ schedules & records

    def _is_logged(self, step: int) -> bool:
        return self.config.every(step) or self.config.detail_every(step)

    def _get_record(self) -> StepRecord:
        if self._record is None:
            self._record = StepRecord(self.step, bool(self.config.detail_every(self.step)))
            pending, self._pending_loss = self._pending_loss, None
            if pending is not None and pending[0] == self.step:
                self._record.loss = pending[1]
        return self._record

    def _clear_iteration(self) -> None:
        self._pending_loss = None
        self._iter_hooks.remove()
        self._module_hooks_on = False
        self._record = None
        self._captures = []
        self._stepped = False
        self._primary_stepped = False
        self._fwd_in_iter = False
        self._bwd_queued = False

    def _end_iteration(self) -> None:
        rec = self._record
        self._iter_hooks.remove()
        self._module_hooks_on = False
        if rec is not None and (rec.stepped or rec.skipped):
            try:
                self._finalize(rec)
            except Exception as exc:
                self._internal("statistics", exc)
        self.step += 1
        self._clear_iteration()
        if self.config.scaler is not None:
            self._scaler_states = getattr(self.config.scaler, "_per_optimizer_states", None)

    def _boundary_at_forward(self) -> None:
        if self._stepped:
            self._end_iteration()
            return
        if self.config.scaler is not None and self._fwd_in_iter:
            states = getattr(self.config.scaler, "_per_optimizer_states", None)
            if states is not None and states is not self._scaler_states:
                # update() ran without an optimizer step: the scaler skipped this step
                rec = self._get_record() if self._is_logged(self.step) else None
                if rec is not None:
                    rec.skipped, rec.skip_reason = True, "scaler"
                self._skipped_total += 1
                self._end_iteration()

    # ------------------------------------------------------------------ root module hooks

    def _on_root_pre(self, module, args, kwargs):
        if not self._active or self._in_replay:
            return None
        try:
            self._boundary_at_forward()
            step = self.step
            if self.config.replay:
                cuda_rng = None
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    cuda_rng = torch.cuda.get_rng_state_all()
                ac = {}
                for dev in ("cpu", "cuda"):
                    try:
                        if torch.is_autocast_enabled(dev):
                            ac[dev] = (True, torch.get_autocast_dtype(dev))
                    except Exception:  # pragma: no cover - older torch
                        pass
                self._captures.append(Capture(args, dict(kwargs), torch.get_rng_state(), cuda_rng, ac,
                                              module.training, torch.is_grad_enabled()))
            if self.config.detail_every(step) and not self._module_hooks_on and torch.is_grad_enabled():
                self._get_record()
                self._install_module_hooks()
            self._fwd_in_iter = True
        except Exception as exc:
            self._internal("forward", exc)
        return None

    def _on_root_post(self, module, args, kwargs, output):
        if not self._active or self._in_replay or not torch.is_grad_enabled():
            return None
        try:
            logged = self._is_logged(self.step)
            cap = self._captures[-1] if (self.config.replay and self._captures) else None
            if cap is None and not logged:
                return None
            leaves = pytree.tree_leaves(output)
            for i, t in enumerate(leaves):
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    self._iter_hooks.add(t.register_hook(self._make_output_hook(i, cap, logged)))
        except Exception as exc:
            self._internal("forward", exc)
        return None

    def _make_output_hook(self, i: int, cap: Capture | None, logged: bool):
        def hook(grad):
            if not self._active or self._in_replay:
                return None
            try:
                if cap is not None:
                    if cap.grad_outputs is None:
                        cap.grad_outputs = []
                    cap.grad_outputs.append((i, grad))
                if logged and not self._bwd_queued:
                    self._bwd_queued = True
                    torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
            except Exception as exc:
                self._internal("backward", exc)
            return None
        return hook

    def _on_backward_end(self) -> None:
        self._bwd_queued = False
        if not self._active or self._in_replay:
            return
        try:
            rec = self._get_record()
            rec.fp_end = self._fingerprint(self._map.params)
            if self.config.scaler is not None and getattr(self.config.scaler, "_scale", None) is not None \
                    and self.config.scaler.is_enabled():
                rec.scale_end = self.config.scaler._scale.detach().clone().float().reshape(1)
        except Exception as exc:
            self._internal("backward", exc)

    def _fingerprint(self, params) -> tuple[list, list[int], torch.Tensor | None]:
        """Four entries of each dense gradient (flat positions 0, n/3, 2n/3, n-1).

        Returns ``(params sampled, their positions, samples)``; ``samples`` is float32, of
        length ``4 * len(params)``, on the first gradient's device.
        """
        plist, pos_l, parts = [], [], []
        ppos = self._map.param_pos
        dev = None
        for p in params:
            g = p.grad
            if g is None or g.layout != torch.strided or g.numel() == 0:
                continue
            n = g.numel()
            key = (n, g.device)
            idx = self._idx_cache.get(key)
            if idx is None:
                idx = torch.tensor([0, n // 3, (2 * n) // 3, n - 1], dtype=torch.long, device=g.device)
                self._idx_cache[key] = idx
            sm = torch.take(g, idx)
            if dev is None:
                dev = sm.device
            elif sm.device != dev:
                sm = sm.to(dev, non_blocking=True)
            parts.append(sm if sm.dtype == torch.float32 else sm.float())
            plist.append(p)
            pos_l.append(ppos[id(p)])
        return plist, pos_l, (torch.cat(parts) if parts else None)

    # ------------------------------------------------------------------ detail-step module hooks

    def _install_module_hooks(self) -> None:
        self._module_hooks_on = True
        self._depth_seen = {}
        self._after_conv = False
        t = self._map.table
        for i, mod in enumerate(self._map.modules):
            self._iter_hooks.add(mod.register_forward_pre_hook(CopyInertHook(self._make_layer_pre(i))))
            self._iter_hooks.add(mod.register_forward_hook(CopyInertHook(
                self._make_layer_post(i, t.families[i], t.activations[i]))))

    def _make_layer_pre(self, i: int):
        recurrent = self._map.table.roles[i] == "recurrent" and isinstance(self._map.modules[i], nn.RNNBase)

        def pre(mod, args):
            if not self._active or self._in_replay:
                return None
            try:
                if i not in self._depth_seen:
                    self._depth_seen[i] = len(self._depth_seen)
                if recurrent and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                    x = args[0]
                    if not x.requires_grad:
                        x = x.detach().requires_grad_(True)
                    bf = getattr(mod, "batch_first", False)
                    tdim = 0 if (x.dim() == 2 or not bf) else 1
                    self._iter_hooks.add(x.register_hook(self._make_time_hook(i, tdim)))
                    if x is not args[0]:
                        return (x,) + tuple(args[1:])
            except Exception as exc:
                self._internal("layer forward", exc)
            return None
        return pre

    def _make_time_hook(self, i: int, tdim: int):
        def hook(g):
            if not self._active or self._in_replay:
                return None
            try:
                gf = g.detach().float()
                dims = [d for d in range(gf.dim()) if d != tdim]
                sq = gf.square().sum(dim=dims) if dims else gf.square()
                self._get_record().pending.append(TimeGrad(sq, layer=i))
            except Exception as exc:
                self._internal("layer backward", exc)
            return None
        return hook

    def _make_layer_post(self, i: int, family: str, act: str):
        is_conv = self._map.conv[i] if i < len(self._map.conv) else False
        role = self._map.table.roles[i]

        def post(mod, args, out):
            if not self._active or self._in_replay:
                return None
            try:
                if role != "activation":
                    self._after_conv = is_conv
                t = out
                if not isinstance(t, torch.Tensor):
                    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
                    t = leaves[0] if leaves else None
                if t is None or not t.is_floating_point():
                    return None
                rec = self._get_record()
                if self.config.forward_stats:
                    rec.pending.append(ActStats(act_stats(t, mod, family, act, self._after_conv), layer=i))
                if t.requires_grad:
                    n = t.numel()
                    self._iter_hooks.add(t.register_hook(self._make_outgrad_hook(i, n)))
            except Exception as exc:
                self._internal("layer forward", exc)
            return None
        return post

    def _make_outgrad_hook(self, i: int, n: int):
        def hook(g):
            if not self._active or self._in_replay:
                return None
            try:
                sq = torch.linalg.vector_norm(g.detach(), dtype=torch.float32).square().reshape(1)
                self._get_record().pending.append(OutGrad(sq, layer=i, n=n))
            except Exception as exc:
                self._internal("layer backward", exc)
            return None
        return hook

    # ------------------------------------------------------------------ optimizer hooks

    def _on_global_pre(self, opt, args, kwargs):
        if not self._active or id(opt) in self._rejected:
            return None
        if id(opt) not in self._opt_ids:
            try:
                if not self._adopt(opt, register=False):
                    return None
            except Exception as exc:
                self._internal("optimizer", exc)
                return None
        return self._on_pre_step(opt, args, kwargs)

    def _on_global_post(self, opt, args, kwargs):
        if not self._active or id(opt) not in self._opt_ids:
            return None
        return self._on_post_step(opt, args, kwargs)

    def _opt_params(self, opt) -> list[torch.Tensor]:
        """The optimizer's parameters that belong to the model (cached per structure)."""
        sig = tuple(len(g["params"]) for g in opt.param_groups)
        c = self._opt_cache.get(id(opt))
        if c is not None and c[0] == sig:
            return c[1]
        pp = self._map.param_pos
        ps = [p for g in opt.param_groups for p in g["params"]]
        unknown = [p for p in ps if id(p) not in pp]
        if unknown:
            self._structure_changed(len(unknown))
            pp = self._map.param_pos
        mine = [p for p in ps if id(p) in pp]
        self._opt_cache[id(opt)] = (sig, mine)
        return mine

    def _structure_changed(self, n_new: int) -> None:
        old = len(self._map.table)
        self._map = discover_layers(self.model, self._map)
        self._names = {id(m): n for n, m in self.model.named_modules()}
        self._opt_cache.clear()
        new_layers = list(self._map.table.names[old:])
        if self.store is not None:
            self.store.write_layers(self._map.rows()[old:])
        self._info = model_info(self._map.table)
        shown = ", ".join(repr(safe_text(n)) for n in new_layers[:5])
        self._emit([Event(step=self.step, kind="internal", layer=None, severity="info",
                          message=(f"The model changed structure at step {self.step}: {n_new} new parameters"
                                   + (f" in {len(new_layers)} new layers ({shown})" if new_layers else "")
                                   + "; they are measured from now on."),
                          evidence={"new_params": n_new, "new_layers": new_layers})])

    def _step_begin(self, opt) -> StepRecord | None:
        primary = bool(self._optimizers) and opt is self._optimizers[0]
        if primary and self._primary_stepped:
            self._end_iteration()   # a second primary step without a forward in between
        self._stepped = True
        if primary:
            self._primary_stepped = True
        if self._is_logged(self.step):
            rec = self._get_record()
            rec.stepped = True
            return rec
        return None

    def _on_pre_step(self, opt, args, kwargs):
        if not self._active or self._in_replay:
            return None
        try:
            rec = self._step_begin(opt)
            params = self._opt_params(opt)
            if rec is not None:
                if rec.lr is None:
                    rec.lr = self._lr(opt)
                self._measure_grads(rec, params, opt)
                if rec.detail:
                    self._measure_params(rec, opt, params)
                self._read(rec)
                if any(v > 0 for v in rec.nf.values()):
                    if not self._nf_active:
                        self._nf_active = True
                        self._on_nonfinite_stats(opt, rec)
                elif rec.post:
                    self._nf_active = False
            if self.config.on_nonfinite == "rollback":
                self._maybe_snapshot()
        except NonFiniteError:
            raise
        except Exception as exc:
            self._internal("optimizer", exc)
        return None

    def _on_post_step(self, opt, args, kwargs):
        if not self._active or self._in_replay:
            return None
        try:
            rec = self._record
            if rec is not None and id(opt) in rec.upd_buffers:
                params, before = rec.upd_buffers.pop(id(opt))
                torch._foreach_sub_(before, [p.detach() for p in params])
                rec.pending.append(UpdateNorms(_norms(before), positions=[self._map.param_pos[id(p)] for p in params]))
        except Exception as exc:
            self._internal("optimizer", exc)
        return None

    @staticmethod
    def _lr(opt) -> float | None:
        try:
            lr = opt.param_groups[0].get("lr")
            return None if lr is None else float(lr)
        except Exception:
            return None

    def _measure_grads(self, rec: StepRecord, params: list[torch.Tensor], opt=None) -> None:
        withg = [p for p in params if p.grad is not None]
        if not withg:
            return
        # GradScaler hands fused optimizers (fused Adam/AdamW/SGD) still-scaled gradients and
        # sets opt.grad_scale; unscale here (on device, no sync) so the numbers are the real ones
        # and the scale is not mistaken for clipping
        gs = getattr(opt, "grad_scale", None)
        unscale = gs if isinstance(gs, torch.Tensor) else None
        pos = [self._map.param_pos[id(p)] for p in withg]
        norms = _norms([p.grad for p in withg])
        if unscale is not None:
            norms = norms / unscale.to(norms.device, norms.dtype)
        rec.pending.append(GradNorms(norms, positions=pos))
        if rec.fp_end is not None and rec.fp_end[2] is not None:
            fparams, fpos, samples = rec.fp_end
            mine = {id(p) for p in withg}
            if len(fparams) == len(withg) and all(id(p) in mine for p in fparams):
                sub, end = fparams, samples           # the usual case: one optimizer, same grads
            else:
                keep = [k for k, p in enumerate(fparams) if id(p) in mine]
                sub = [fparams[k] for k in keep]
                sel = torch.tensor([4 * k + j for k in keep for j in range(4)], dtype=torch.long,
                                   device=samples.device)
                end = samples.index_select(0, sel)
            cparams, cpos, cur = self._fingerprint(sub)
            if cur is not None and unscale is not None:
                cur = cur / unscale.to(cur.device, cur.dtype)
            if cur is not None and len(cparams) == len(sub):
                rec.pending.append(ClipSamples(torch.cat([end, cur.to(end.device)]), positions=cpos))
                if rec.scale_end is not None:
                    rec.pending.append(LossScale(rec.scale_end))

    def _measure_params(self, rec: StepRecord, opt, params: list[torch.Tensor]) -> None:
        if not params:
            return
        rec.pending.append(ParamNorms(_norms(params), positions=[self._map.param_pos[id(p)] for p in params]))
        if self.config.update_ratio:
            upd = [p for p in params if p.grad is not None]
            if upd:
                with torch.no_grad():
                    before = [p.detach().clone() for p in upd]
                rec.upd_buffers[id(opt)] = (upd, before)

    # ------------------------------------------------------------------ reading back

    def _read(self, rec: StepRecord) -> None:
        """Read ``rec``'s pending values now, with the deferred records (which complete)."""
        done = self._readback.read_now(rec)
        self._completed(done, also=rec)

    def _flush_deferred(self) -> None:
        self._completed(self._readback.flush())

    def _completed(self, done: list[StepRecord], also: StepRecord | None = None) -> None:
        """Records whose values reached the host: exact NaN/Inf counts, then (``done`` only)
        detectors, history and store."""
        for r in (done if also is None else [*done, also]):
            self._count_nonfinite(r)
        for r in done:
            self._complete(r)

    def _count_nonfinite(self, rec: StepRecord) -> None:
        # exact NaN/Inf counts, only for gradients whose norm is not finite (slow path)
        bad = rec.nonfinite_unknown()
        if bad:
            params = self._map.params
            for p in bad:
                g = params[p].grad
                rec.nf[p] = int(torch.logical_not(torch.isfinite(_dense_values(g).detach())).sum()) \
                    if g is not None else 0
        for p in rec.post:
            rec.nf.setdefault(p, 0)

    # ------------------------------------------------------------------ non-finite handling

    def _replay(self, rec: StepRecord) -> ReplayReport | None:
        if not self.config.replay or rec.step in self._replayed_steps:
            return rec.origin
        self._replayed_steps.add(rec.step)
        self._in_replay = True
        try:
            report = replay_step(self.model, self._captures, rec.step, self._names)
        except Exception as exc:
            self._internal("replay", exc)
            return None
        finally:
            self._in_replay = False
        rec.origin = report
        self.replays.append(report)
        return report

    def _diagnosis_text(self, rec: StepRecord) -> str:
        r = rec.origin
        if r is None:
            return ""
        return f" Forensic replay: {r.summary}."

    def _on_nonfinite_stats(self, opt, rec: StepRecord) -> None:
        """Non-finite gradients seen in the statistics of a logged step (pre-step hook)."""
        self._replay(rec)
        n_bad = sum(1 for v in rec.nf.values() if v > 0)
        if self.config.on_nonfinite == "warn":
            warnings.warn(f"gradhealth: non-finite gradients in {n_bad} parameter tensors at step {rec.step}."
                          + self._diagnosis_text(rec), WatchWarning, stacklevel=4)
        elif id(opt) not in self._guards or not self._guards[id(opt)].active:
            # an optimizer adopted mid-step: its guard acts from the next step on
            if self.config.on_nonfinite == "raise":
                self._raise(rec, n_bad)
            warnings.warn(f"gradhealth: non-finite gradients at step {rec.step} of an optimizer adopted "
                          "during this step; the guard acts from its next step." + self._diagnosis_text(rec),
                          WatchWarning, stacklevel=4)

    def _raise(self, rec: StepRecord, n_bad: int, info: dict | None = None):
        info = info or {}
        diag = rec.origin
        ev = Event(step=rec.step, kind="guard", layer=diag.module if diag and diag.found else None,
                   severity="critical",
                   message=(f"Stopped training at step {rec.step}: non-finite gradients in {n_bad} parameter "
                            + ("tensors (on_nonfinite='raise')." if self.config.on_nonfinite == "raise" else
                               f"tensors, {info.get('n_consecutive', '?')} steps in a row: on_nonfinite="
                               f"{self.config.on_nonfinite!r} spent its budget (max_consecutive_skips="
                               f"{info.get('max_consecutive_skips')}).") + self._diagnosis_text(rec)),
                   evidence={"action": "raise", "n_nonfinite_params": n_bad,
                             **({"replay": diag.to_dict()} if diag else {})},
                   remedy="" if self.config.on_nonfinite != "raise" else
                   "gradhealth.watch(model, optimizer, on_nonfinite='skip')")
        ev = self._with_remedy(ev)
        self._emit([ev])
        rec.skipped, rec.skip_reason = True, "guard"
        try:
            self._flush_deferred()
            self._finalize(rec, defer_ok=False)
        except Exception as exc:  # pragma: no cover
            self._internal("statistics", exc)
        self._record = None
        if self.store is not None:
            try:
                self.store.flush()
            except Exception:  # pragma: no cover
                pass
        raise NonFiniteError(ev.message, diagnosis=diag if diag is not None else ev)

    def _on_guard_skip(self, opt, info: dict) -> None:
        """StepGuard found non-finite gradients: the optimizer step will not run."""
        if not self._active:
            return
        action = info.get("action", "skip")
        try:
            rec = self._step_begin(opt)
            if rec is None:   # not a logged step: log it anyway, it is the interesting one
                rec = self._get_record()
                rec.stepped = True
            if rec.lr is None:
                rec.lr = self._lr(opt)
            params = self._opt_params(opt)
            rec.skipped_pos.update(self._map.param_pos[id(p)] for p in params)
            self._measure_grads(rec, params, opt)
            self._read(rec)
            self._replay(rec)
        except Exception as exc:
            self._internal("guard", exc)
            rec = self._get_record()
        n_bad = len(info.get("nonfinite", ())) or sum(1 for v in rec.nf.values() if v > 0)
        if action == "raise" or self.config.on_nonfinite == "raise":
            self._raise(rec, n_bad, info)
        self._skipped_total += 1
        rec.skipped = True
        diag = rec.origin
        ev_base = {"n_nonfinite_params": n_bad, "n_consecutive": info.get("n_consecutive"),
                   "skipped_steps": info.get("skipped_steps"), "lr": rec.lr}
        if diag is not None:
            ev_base["replay"] = diag.to_dict()
        layer = diag.module if (diag is not None and diag.found) else None
        if self.config.on_nonfinite == "rollback":
            rec.skip_reason = "rollback"
            msg, ev = self._rollback(rec)
            ev_base.update(ev)
            self._emit([self._with_remedy(Event(step=rec.step, kind="guard", layer=layer, severity="warning",
                                                message=msg + self._diagnosis_text(rec), evidence=ev_base))])
        else:
            rec.skip_reason = "guard"
            ev_base["action"] = "skip"
            self._emit([self._with_remedy(Event(step=rec.step, kind="guard", layer=layer, severity="warning",
                              message=(f"Skipped the optimizer step at step {rec.step}: non-finite gradients in "
                                       f"{n_bad} parameter tensors (parameters and optimizer state untouched; "
                                       f"{info.get('n_consecutive', 1)} in a row, budget "
                                       f"{self.config.max_consecutive_skips})." + self._diagnosis_text(rec)),
                              evidence=ev_base))])

    def _maybe_snapshot(self) -> None:
        if self._snapshot is not None and self.step - self._snapshot.step < self.config.rollback_every:
            return
        directory = self.run_dir if self.config.rollback_storage == "disk" else None
        try:
            self._snapshot = _guard.take_snapshot(self.step, self._state_tensors(), self._optimizers, directory)
        except Exception as exc:
            self._internal("rollback snapshot", exc)

    def _rollback(self, rec: StepRecord) -> tuple[str, dict]:
        snap = self._snapshot
        if snap is None:
            return (f"Skipped the optimizer step at step {rec.step} (on_nonfinite='rollback'): no known-good "
                    "state saved yet, nothing to roll back to.", {"action": "skip", "to_step": None})
        try:
            _guard.restore_snapshot(snap, self._state_tensors(), self._optimizers)
        except Exception as exc:
            self._internal("rollback", exc)
            return (f"Skipped the optimizer step at step {rec.step}; restoring the step-{snap.step} state failed.",
                    {"action": "skip", "to_step": None})
        lrs = []
        if self.config.rollback_lr_factor is not None and self.config.rollback_lr_factor != 1.0:
            lrs = _guard.scale_lr(self._optimizers, self.config.rollback_lr_factor)
        lr_txt = (f"; learning rate {lrs[0][0]:.3g} -> {lrs[0][1]:.3g}" if lrs else "")
        return (f"Rolled back at step {rec.step}: non-finite gradients; restored the parameters and optimizer "
                f"state of step {snap.step}{lr_txt}.",
                {"action": "rollback", "to_step": snap.step,
                 "lr_before": lrs[0][0] if lrs else None, "lr_after": lrs[0][1] if lrs else None})

    # ------------------------------------------------------------------ finishing a step

    def _finalize(self, rec: StepRecord, defer_ok: bool = True) -> None:
        # what is left to read: update norms, loss, output gradients, forward statistics
        self._completed(self._readback.finish(rec, defer_ok))

    def _complete(self, rec: StepRecord) -> None:
        loss = rec.loss if (rec.loss is None or isinstance(rec.loss, float)) else float(rec.loss)
        # forward depth: the first detail step fixes the order of the layers seen running
        if self._depth_seen and not self._depth_known:
            self._map.table = forward_depth(self._map.table, self._depth_seen)
            self._depth_known = True
        stats, measured = step_stats(rec, self._map.table, self._map.pos_layer, loss, self._info)
        try:
            events, self._det_state = self._detector.update(stats, self._det_state)
        except Exception as exc:
            self._internal("detectors", exc)
            events = []
        events = [self._with_remedy(e) for e in events]
        self.history.append(stats)
        self._emit(events)
        if self.store is not None:
            row, rows = store_rows(stats, measured, rec.t - self._t0)
            try:
                self.store.append_steps([row])
                if rows:
                    self.store.append_layer_stats(rows)
            except Exception as exc:  # pragma: no cover - never raises by contract
                self._internal("store", exc)

    def _with_remedy(self, e: Event) -> Event:
        from dataclasses import replace

        if e.evidence.get("origin_direction") == "input" or (
                isinstance(e.evidence.get("replay"), dict) and e.evidence["replay"].get("direction") == "input"):
            return replace(e, remedy=_DATA_REMEDY)
        try:
            from ..remedies.prescribe import prescribe

            ev = dict(e.evidence)
            if e.layer is not None:
                ev.setdefault("worst_layer", e.layer)
            rx = prescribe(e.kind, ev, layer=e.layer, model_info=self._info)
            if e.kind == "guard":   # the guard already skips: prescribe what removes the cause
                rx = [r for r in rx if "skip_nonfinite" not in r.code]
            if rx:
                return replace(e, remedy=rx[0].code)
        except Exception as exc:
            self._internal("prescribe", exc)
        return e


def watch(model: nn.Module, optimizer=None, *, run_dir: str | PathLike | None = None,  # noqa: PLR0913
          # (the public keyword options, one per WatchConfig field, spelled out for help() and type checkers)
          on_nonfinite: OnNonFinite = "warn", every: ScheduleLike = 1, detail_every: ScheduleLike | None = None,
          scaler=None, detectors: Detector | Iterable[Detector] | None = None, replay: bool = True,
          max_consecutive_skips: int | None = 10, rollback_every: int = 100,
          rollback_lr_factor: float | None = 0.5, rollback_storage: RollbackStorage = "memory",
          update_ratio: bool = True, forward_stats: bool = True, history_size: int = 1000,
          meta: dict | None = None) -> Watcher:
    """Watch ``model`` while it trains: per-layer statistics, detectors, guard, forensic replay.

    Use it as a context manager (or call ``.remove()`` when done)::

        with gradhealth.watch(model, optimizer, run_dir="runs/exp1", on_nonfinite="skip") as w:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()          # observed through optimizer hooks
                optimizer.zero_grad()
                w.observe(loss)           # optional: enables loss-spike detection
        w.events                          # list of Event

    Args:
        model: the module being trained (its forward is called once or more per step).
        optimizer: the optimizer (or a list of them) stepping the model's parameters. ``None``:
            adopt, through global optimizer hooks, every optimizer that steps them (one
            created after ``watch``, too).
        run_dir: directory of the SQLite run store (``run.sqlite``), or None to keep
            everything in memory only.
        on_nonfinite: ``"warn"`` (default: record, warn, let the step through), ``"skip"``
            (skip the step, parameters and optimizer state untouched), ``"rollback"`` (skip and
            restore the last known-good state, lower the learning rate), ``"raise"``
            (:class:`~gradhealth.errors.NonFiniteError` carrying the diagnosis).
        every: logging schedule of the per-step statistics (gradient norms per layer, global
            norm before and after clipping, non-finite counts, loss, learning rate): an int N
            (every N steps), ``"log"`` (log-spaced) or a :mod:`~gradhealth.watch.schedule`.
        detail_every: schedule of the costlier statistics (parameter norms, update ratios,
            gradients w.r.t. layer outputs, per-time-step gradients of recurrent layers,
            activation std / dead / saturated fractions). Default: steps 0, 1, 2, 4, ..., 64,
            then every 100th step.
        scaler: the ``torch.amp.GradScaler`` in use, if any: statistics are taken on unscaled
            gradients either way (the optimizer hook runs after unscaling); with the scaler the
            watcher also records the steps it skipped and separates unscaling from clipping.
        detectors: a :class:`~gradhealth.detectors.Detector` or a list of them; default
            :func:`~gradhealth.detectors.default_detectors`.
        replay: run forensic replay on a step with non-finite gradients (keeps references to
            each step's batch and its RNG state; no copies).
        max_consecutive_skips: budget of consecutive skipped (or rolled-back) steps before
            raising; None for no limit.
        rollback_every: steps between known-good snapshots for ``"rollback"``.
        rollback_lr_factor: learning-rate factor applied on each rollback (None: keep).
        rollback_storage: ``"memory"`` or ``"disk"`` (``run_dir/rollback.pt``).
        update_ratio: measure update-to-weight ratios on detail steps (copies the parameters
            the optimizer updates, on those steps only).
        forward_stats: measure activation statistics on detail steps.
        history_size: logged steps kept in memory (``watcher.history``); the store keeps all.
        meta: extra metadata for the run store.

    Returns:
        The attached :class:`Watcher`.

    Raises:
        ModelError: the model (or some of its parameters) is already watched.
        ParameterError: an argument breaks its rule.
    """
    _check_model(model)   # the model is checked first, as before the options were a dataclass
    config = WatchConfig(run_dir=run_dir, on_nonfinite=on_nonfinite, every=every, detail_every=detail_every,
                         scaler=scaler, detectors=detectors, replay=replay,
                         max_consecutive_skips=max_consecutive_skips, rollback_every=rollback_every,
                         rollback_lr_factor=rollback_lr_factor, rollback_storage=rollback_storage,
                         update_ratio=update_ratio, forward_stats=forward_stats, history_size=history_size,
                         meta=meta)
    return Watcher(model, optimizer, config)
