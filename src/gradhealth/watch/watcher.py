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

Clipping (the norm before and after it) is told from gradient fingerprints: see
:mod:`gradhealth.watch.instruments`.

Steps and iterations: step ``s`` is the ``s``-th training iteration (0-based). An iteration
ends when the model is called again after an optimizer step, when the primary (first)
optimizer steps twice without a forward in between, or when an AMP GradScaler's ``update()``
ran (then the iteration is recorded as skipped if the optimizer did not step). A step the
guard or the scaler skipped still counts, so step numbers follow the training loop.
"""

from __future__ import annotations

import atexit
import functools
import math
import warnings
from collections import deque
from pathlib import Path

import torch
from torch import nn

from ..detectors.base import LayerTable, StepStats
from ..errors import NonFiniteError, ParameterError
from ..events import Event
from ..remedies.guards import closure_runs_first, run_closure_first
from ..store import writer as _store_writer  # noqa: F401  (imported first: see atexit below)
from . import _compile, _registry
from ._assemble import forward_depth, model_info, run_meta
from ._optimizers import Optimizers, learning_rate, structure_event
from ._readback import ReadbackQueue
from ._record import Iteration, StepRecord
from .config import (
    WatchConfig,
    as_loss,
    as_optimizers,
    check_model,
    default_detail_schedule,
    resolve_config,
)
from .guard import NonFinitePolicy
from .hooks import HookSet, LayerMap, WeakMethodHook, discover_layers, module_names
from .instruments import Instruments, hook_method
from .replay import Capture, ReplayReport, tensor_leaves
from .runlog import RunLog, WatchWarning

__all__ = ["Watcher", "WatchWarning", "default_detail_schedule"]

# the store's exit hook (closing open stores) is registered when it is imported, so before this
# one, which exit therefore runs first: unsettled steps of live watchers reach the store
atexit.register(_registry.settle_all)

_OWNER = "gradhealth.watch"



class Watcher:
    """Watches a model while it trains. Create it with :func:`watch`; see there for arguments.

    The watcher keeps the step clock and the public API; its rooms do the rest:
    :class:`~gradhealth.watch.instruments.Instruments` (device-side measurement),
    :class:`~gradhealth.watch._readback.ReadbackQueue` (host transfers),
    :mod:`~gradhealth.watch._assemble` (statistics and store rows) and
    :class:`~gradhealth.watch.guard.NonFinitePolicy` (skip, rollback, raise).

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
        check_model(model)
        self.config = config = resolve_config(config, options)
        opts = as_optimizers(optimizer)
        self.model = model
        self._log = RunLog(config, clock=lambda: self.step, model=_compile.unwrap(model))
        self.step = 0
        self._active = False
        self._map: LayerMap = discover_layers(model)
        self._names = module_names(model)
        _registry.check_overlap(self)
        for o in opts:
            Optimizers.check_owned(o, self._map.param_pos)

        self._hooks = HookSet()        # permanent (until remove)
        self._iter_hooks = HookSet()   # this iteration only (detail module hooks, tensor hooks)
        self._opts = Optimizers(global_hooks=optimizer is None)
        self._it = Iteration()
        self._sched: tuple[int, bool, bool] = (-1, False, False)   # (step, logged, detail), _schedule()
        self._scaler_states = None
        self._skipped_total = 0
        self._observes = False   # observe() was called (then a read waits for the step's loss)
        self._seen_end = False   # an iteration ended at the next forward (observe() had its chance)
        self._log.model_info = model_info(self._map.table)
        self._readback = ReadbackQueue()
        self._inst = Instruments(self)
        self.run_dir = Path(config.run_dir) if config.run_dir is not None else None
        self._policy = NonFinitePolicy(config, model, self._state_tensors, self._internal, self.run_dir)
        if config.run_dir is not None:
            self._log.open_store(config.run_dir, run_meta(_compile.unwrap(model), config, self._map, config.meta))
        self._attach(opts)

    # ------------------------------------------------------------------ public API

    @property
    def on_nonfinite(self) -> str:
        """The non-finite policy (``config.on_nonfinite``)."""
        return self.config.on_nonfinite

    @property
    def events(self) -> list[Event]:
        """Every event so far (detectors, guard, replay, internal errors), in order."""
        self._up_to_date()
        return self._log.events

    @property
    def history(self) -> deque[StepStats]:
        """The last ``history_size`` logged steps."""
        self._up_to_date()
        return self._log.history

    @property
    def replays(self) -> list[ReplayReport]:
        """Every forensic replay's report so far."""
        return self._policy.replays

    @property
    def store(self):
        """The run store (``run_dir`` given), else None."""
        self._up_to_date()
        return self._log.store

    @property
    def layers(self) -> LayerTable:
        return self._map.table

    @property
    def active(self) -> bool:
        """Whether the watcher is attached (False after :meth:`remove`)."""
        return self._active

    @property
    def optimizers(self) -> list:
        return list(self._opts.watched)

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
            loss: a scalar: a tensor with one element or a Python/NumPy number (else ParameterError).
        """
        value = as_loss(loss)
        if not self._active:
            return
        self._observes = True
        try:
            step = self.step
            if not self._is_logged(step) and self._it.record is None:
                # not on the schedule, but the guard may still log this step (a skipped one
                # is the interesting one): keep a reference until the iteration ends
                self._it.pending_loss = (step, value)
                return
            self._get_record().loss = value
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
            rec = self._it.record
            if self._it.stepped or (rec is not None and (rec.stepped or rec.skipped)):
                self._end_iteration()
            else:
                self._clear_iteration()
            self._completed(self._readback.flush())
        except Exception as exc:
            self._internal("remove", exc)
        self._active = False
        self._iter_hooks.remove()
        self._hooks.remove()
        self._policy.remove()
        self._it = Iteration()
        _registry.unregister(self)
        self._log.close({"steps": self.step, "skipped_steps": self._skipped_total, "n_events": len(self.events)})

    def state_dict(self) -> dict:
        """What a resumed run needs to continue (step, skipped steps, detector windows, guard
        counters): save it with the checkpoint, give it to :meth:`load_state_dict`. A step whose
        optimizer step ran is ended first (as at the next forward), so that it is counted."""
        if self._active:
            self._end_for_checkpoint()
        return {"version": 1, "step": self.step, "skipped": self._skipped_total,
                "log": self._log.state_dict(), "policy": self._policy.state_dict(self._opts.watched)}

    @hook_method("state_dict")
    def _end_for_checkpoint(self) -> None:
        self._boundary_at_forward()
        self._completed(self._readback.flush())

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`, before the first resumed step (ParameterError if
        ``state`` is not one)."""
        self.step, self._skipped_total = self._log.load_state_dict(state, self._policy, self._opts.watched)

    def summary(self) -> str:
        """A few plain-text lines: steps, skipped steps, and the events by kind."""
        self._up_to_date()
        return self._log.summary(self.step, self._skipped_total)

    def _up_to_date(self) -> None:
        """What a reader sees includes the step just taken: an iteration whose optimizers
        have all stepped, and whose loss was observed (when ``observe`` is used at all; before
        the first iteration ended, that is not known yet), ends now rather than at the next
        forward (as at :meth:`state_dict`)."""
        it, rec = self._it, self._it.record
        if self._active and it.stepped and it.n_stepped >= len(self._opts.watched) and (
                # (a loss not coming is known once an iteration ended at a forward without one)
                ((rec.loss if rec is not None else it.pending_loss) is not None) if self._observes
                else self._seen_end):
            self._end_for_checkpoint()
        self._log.settle()

    # ------------------------------------------------------------------ attaching

    def _live(self) -> bool:
        """Whether hooks should act: attached, and not inside a forensic replay."""
        return self._active and not self._policy.replaying

    def _state_tensors(self) -> list[torch.Tensor]:
        """What a rollback restores: the parameters and the buffers (BatchNorm statistics)."""
        return list(self._map.params) + [b for b in self.model.buffers()]

    def _attach(self, opts: list) -> None:
        self._active = True
        _registry.register(self)
        m = self.model
        # weak and copy-inert: deepcopy(model) / torch.save(model) must not copy the Watcher
        self._hooks.add(m.register_forward_pre_hook(WeakMethodHook(self, "_on_root_pre"), with_kwargs=True))
        self._hooks.add(m.register_forward_hook(WeakMethodHook(self, "_on_root_post"), with_kwargs=True))
        for o in opts:
            self._adopt(o, register=True)
        if self._opts.global_hooks:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            self._hooks.add(register_optimizer_step_pre_hook(self._on_global_pre))
            self._hooks.add(register_optimizer_step_post_hook(self._on_global_post))
        if self.config.scaler is not None:
            self._scaler_states = getattr(self.config.scaler, "_per_optimizer_states", None)
        self._log.write_layers(self._map.rows())

    def _adopt(self, opt, register: bool) -> bool:
        """Start watching ``opt`` if it holds parameters of the model."""
        if id(opt) in self._opts.ids:
            return True
        if not Optimizers.owns(opt, self._map.param_pos):
            if register:
                Optimizers.check_owned(opt, self._map.param_pos)
            self._opts.rejected.add(id(opt))
            return False
        self._opts.add(opt)
        if register:
            self._hooks.add(opt.register_step_pre_hook(self._pre_step))
            self._hooks.add(opt.register_step_post_hook(self._on_post_step))
        self._policy.install(opt, self._on_guard_skip, also=lambda _o=opt: [
            p for o in self._opts.watched if o is not _o for p in self._opt_params(o)])
        return True

    # ------------------------------------------------------------------ faults and events

    def _internal(self, site: str, exc: BaseException) -> None:
        self._log.internal(site, exc)

    def _emit(self, events: list[Event]) -> None:
        self._log.emit(events)

    # ------------------------------------------------------------------ the step clock

    def _schedule(self, step: int) -> tuple[int, bool, bool]:
        """``(step, logged, detail)``: the schedules asked once per step (hooks ask often)."""
        c = self._sched
        if c[0] != step:
            detail = bool(self.config.detail_every(step))
            c = self._sched = (step, detail or bool(self.config.every(step)), detail)
        return c

    def _is_logged(self, step: int) -> bool:
        return self._schedule(step)[1]

    def _get_record(self) -> StepRecord:
        it = self._it
        if it.record is None:
            it.record = StepRecord(self.step, self._schedule(self.step)[2])
            pending, it.pending_loss = it.pending_loss, None
            if pending is not None and pending[0] == self.step:
                it.record.loss = pending[1]
        return it.record

    def _clear_iteration(self) -> None:
        self._iter_hooks.remove()
        self._it = Iteration()

    def _end_iteration(self) -> None:
        rec = self._it.record
        self._iter_hooks.remove()
        self._it.layer_hooks = False
        if rec is not None:
            rec.versions = None   # the step ends: release its references to the gradients
        if rec is not None and (rec.stepped or rec.skipped):
            try:
                self._finalize(rec)
            except Exception as exc:
                self._internal("statistics", exc)
        self._log.settle_due()
        self.step += 1
        self._clear_iteration()
        if self.config.scaler is not None:
            self._scaler_states = getattr(self.config.scaler, "_per_optimizer_states", None)

    def _boundary_at_forward(self) -> None:
        if self._it.stepped:
            self._end_iteration()
            return
        if self.config.scaler is not None and self._it.forward:
            states = getattr(self.config.scaler, "_per_optimizer_states", None)
            if states is not None and states is not self._scaler_states:
                # update() ran without an optimizer step: the scaler skipped this step
                rec = self._get_record() if self._is_logged(self.step) else None
                if rec is not None:
                    rec.skipped, rec.skip_reason = True, "scaler"
                    if _nonfinite_loss(rec.loss):
                        self._replay(rec)   # a NaN from the forward, not the scaler's overflow
                self._skipped_total += 1
                self._end_iteration()

    def _step_begin(self, opt) -> StepRecord | None:
        it = self._it
        primary = self._opts.is_primary(opt)
        if primary and it.primary_stepped:
            self._end_iteration()   # a second primary step without a forward in between
            it = self._it
        it.n_stepped += 1
        if primary:
            it.primary_stepped = True
        if self._is_logged(self.step):
            rec = self._get_record()
            rec.stepped = True
            return rec
        return None

    # ------------------------------------------------------------------ root module hooks

    @hook_method("forward")
    def _on_root_pre(self, module, args, kwargs):
        self._seen_end = self._seen_end or self._it.stepped
        self._boundary_at_forward()
        if not self._it.forward:
            self._policy.before_forward()
        if self.config.replay and (self.config.guarded or self._is_logged(self.step)):
            # (an unlogged step of an unguarded run never replays: nothing reads its gradients)
            self._it.captures.append(Capture.of_call(module, args, kwargs))
        if self._schedule(self.step)[2] and not self._it.layer_hooks and torch.is_grad_enabled():
            self._get_record()
            self._it.layer_hooks = True
            _compile.install_layer_hooks(self, args, kwargs)   # compiled model: forward stats from a shadow
        self._it.forward = True

    @hook_method("forward")
    def _on_root_post(self, module, args, kwargs, output):
        if not torch.is_grad_enabled():
            return
        logged = self._is_logged(self.step)
        cap = self._it.captures[-1] if (self.config.replay and self._it.captures) else None
        if cap is None and not logged:
            return
        # (a plain tensor, the usual output, without the pytree walk)
        leaves = [output] if type(output) is torch.Tensor else tensor_leaves(output)
        if cap is not None:
            cap.outputs = leaves   # references: the replay compares them with the re-run
        for i, t in enumerate(leaves):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                self._iter_hooks.add(t.register_hook(self._output_hook(i, cap, logged)))

    def _output_hook(self, i: int, cap: Capture | None, logged: bool):
        return functools.partial(self._on_output_grad, i, cap, logged)

    @hook_method("backward")
    def _on_output_grad(self, i: int, cap: Capture | None, logged: bool, grad):
        if cap is not None:
            if cap.grad_outputs is None:
                cap.grad_outputs = []
            cap.grad_outputs.append((i, grad))
        if logged and not self._it.bwd_queued:
            self._it.bwd_queued = 1
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_backward_end(self) -> None:
        # Re-queued once so it runs after the final callbacks queued later in this backward
        # (DDP's writes the all-reduced gradients): it then sees what the optimizer will see.
        if self._it.bwd_queued == 1:
            self._it.bwd_queued = 2
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
            return
        self._it.bwd_queued = False
        self._backward_end()

    @hook_method("backward")
    def _backward_end(self) -> None:
        self._inst.backward_end(self._get_record())

    # ------------------------------------------------------------------ optimizer hooks

    def _on_global_pre(self, opt, args, kwargs):
        if not self._active or id(opt) in self._opts.rejected:
            return None
        if id(opt) not in self._opts.ids:
            try:
                if not self._adopt(opt, register=False):
                    return None
            except Exception as exc:
                self._internal("optimizer", exc)
                return None
        return self._pre_step(opt, args, kwargs)

    def _on_global_post(self, opt, args, kwargs):
        if not self._active or id(opt) not in self._opts.ids:
            return None
        return self._on_post_step(opt, args, kwargs)

    def _opt_params(self, opt) -> list[torch.Tensor]:
        """The optimizer's parameters that belong to the model (cached per structure)."""
        mine = self._opts.cached(opt)
        if mine is None:
            n_new = self._opts.unknown(opt, self._map.param_pos)
            if n_new:
                self._structure_changed(n_new)
            mine = self._opts.refresh(opt, self._map.param_pos)
        return mine

    def _structure_changed(self, n_new: int) -> None:
        old = len(self._map.table)
        self._map = discover_layers(self.model, self._map)
        self._names = module_names(self.model)
        self._opts.forget_params()
        self._policy.structure_changed()
        self._log.write_layers(self._map.rows()[old:])
        self._log.model_info = model_info(self._map.table)
        self._emit([structure_event(self.step, n_new, list(self._map.table.names[old:]))])

    def _pre_step(self, opt, args, kwargs):
        """The step pre-hook. ``step(closure)`` computes its gradients inside ``step``, after
        this hook: the closure runs here first (as under the guard), so the statistics are this
        step's, not the previous one's (torch.optim's own ``step`` only: :func:`closure_runs_first`).
        Not isolated: the closure is the user's code."""
        closure = None
        if (args[1:] or kwargs) and closure_runs_first(opt):
            _, closure, args, kwargs = run_closure_first(args, kwargs, at=1)   # args[0] is opt
        self._on_pre_step(opt, args, kwargs)
        return None if closure is None else (args, kwargs)

    @hook_method("optimizer", passthrough=(NonFiniteError,))
    def _on_pre_step(self, opt, args, kwargs):
        rec = self._step_begin(opt)
        params = self._opt_params(opt)
        if rec is not None:
            if rec.lr is None:
                rec.lr = learning_rate(opt)
            self._inst.measure_grads(rec, params, opt)
            if rec.detail:
                self._inst.measure_params(rec, opt, params)
            self._read(rec)
            if rec.overflow or rec.nf_bad:
                if not self._policy.episode:
                    self._policy.episode = True
                    self._on_nonfinite_stats(opt, rec)
            elif rec.post:
                self._policy.episode = False
        self._policy.before_step(self.step, self._opts.watched)

    @hook_method("optimizer")
    def _on_post_step(self, opt, args, kwargs):
        rec = self._it.record
        self._inst.finish_updates(rec, opt)
        if rec is not None and (rec.detail or rec.overflow or rec.nf_bad):
            bad, bufs = self._inst.nonfinite_after_step(opt)   # detail and bad steps only (one sync)
            if bad and not self._policy.state_bad:
                # (after the step's own events, the cause: emitted when the record settles)
                rec.late.append(self._log.with_remedy(self._policy.state_event(rec, bad, self._map.param_names)))
            self._policy.state_bad = bool(bad)
            new = [b for b in bufs if b not in self._policy.buffers_bad]   # each said once
            if new:
                rec.late.append(self._policy.buffer_event(rec, new))   # (its remedy is its own)
            self._policy.buffers_bad = set(bufs)

    # ------------------------------------------------------------------ reading back

    def _read(self, rec: StepRecord) -> None:
        """Read ``rec``'s pending values now, with the deferred records (which complete)."""
        self._completed(self._readback.read_now(rec), also=rec)

    def _completed(self, done: list[StepRecord], also: StepRecord | None = None) -> None:
        """Records whose values reached the host: exact NaN/Inf counts, then (``done`` only)
        detectors, history and store."""
        for r in (done if also is None else [*done, also]):
            self._inst.count_nonfinite(r)
        for r in done:
            self._complete(r)

    def _finalize(self, rec: StepRecord, defer_ok: bool = True) -> None:
        # what is left to read: update norms, loss, output gradients, forward statistics
        self._completed(self._readback.finish(rec, defer_ok))

    def _complete(self, rec: StepRecord) -> None:
        loss = rec.loss if (rec.loss is None or isinstance(rec.loss, float)) else float(rec.loss)
        if self._inst.depth_seen and not self._inst.depth_known:
            # forward depth: the first detail step fixes the order of the layers seen running
            self._map.table = forward_depth(self._map.table, self._inst.depth_seen)
            self._inst.depth_known = True
        urgent = bool(rec.skipped or rec.nf_bad or rec.overflow or rec.origin is not None
                      or (loss is not None and not math.isfinite(loss)))
        self._log.complete(rec, self._map.table, self._map.pos_layer, loss, urgent)

    # ------------------------------------------------------------------ non-finite steps

    def _replay(self, rec: StepRecord) -> None:
        if not self._it.replayed:   # once per step (the statistics and the guard may both ask)
            self._it.replayed = True
            self._policy.replay(rec, self._it.captures, self._names, self._map.sharded)

    def _on_nonfinite_stats(self, opt, rec: StepRecord) -> None:
        """Non-finite gradients seen in the statistics of a logged step (pre-step hook)."""
        n_bad = sum(1 for v in rec.nf.values() if v > 0)
        if n_bad:
            self._replay(rec)
        if self.config.on_nonfinite != "warn" and self._policy.guarding(opt):
            return
        if not n_bad:   # finite entries, overflowing norm: no NaN to replay, but an event
            ev = self._log.with_remedy(self._policy.overflow_event(rec))
            self._emit([ev])
            warnings.warn("gradhealth: " + ev.message, WatchWarning, stacklevel=4)
            return
        if self.config.on_nonfinite == "raise":   # an optimizer adopted mid-step, unguarded yet
            self._raise(rec, n_bad)
        warnings.warn(self._policy.stats_warning(rec, n_bad), WatchWarning, stacklevel=4)

    def _raise(self, rec: StepRecord, n_bad: int, info: dict | None = None):
        ev = self._log.with_remedy(self._policy.stop_event(rec, n_bad, info))
        self._emit([ev])
        rec.skipped, rec.skip_reason = True, "guard"
        try:
            self._completed(self._readback.flush())
            self._finalize(rec, defer_ok=False)
        except Exception as exc:  # pragma: no cover
            self._internal("statistics", exc)
        self._it.record = None
        rec.versions = None       # the step ends here too (see _end_iteration)
        self._log.flush()
        raise NonFiniteError(ev.message, diagnosis=rec.origin if rec.origin is not None else ev)

    def _on_guard_skip(self, opt, info: dict) -> None:
        """StepGuard found non-finite gradients: the optimizer step will not run."""
        if not self._active:
            return
        already = False
        try:
            rec = self._step_begin(opt)
            if rec is None:   # not a logged step: log it anyway, it is the interesting one
                rec = self._get_record()
                rec.stepped = True
            already = rec.skipped   # another optimizer of this step was skipped already
            if rec.lr is None:
                rec.lr = learning_rate(opt)
            params = self._opt_params(opt)
            rec.skipped_pos.update(self._map.param_pos[id(p)] for p in params)
            self._inst.measure_grads(rec, params, opt)
            self._read(rec)
            self._replay(rec)
        except Exception as exc:
            self._internal("guard", exc)
            rec = self._get_record()
        n_bad = len(info.get("nonfinite", ())) or sum(1 for v in rec.nf.values() if v > 0)
        if info.get("action", "skip") == "raise" or self.config.on_nonfinite == "raise":
            self._raise(rec, n_bad, info)
        if already:   # one step, one skip: counted and said once
            return
        self._skipped_total += 1
        rec.skipped = True
        self._emit([self._log.with_remedy(self._policy.skip_event(rec, n_bad, info, self._opts.watched))])


def _nonfinite_loss(loss) -> bool:
    """Whether an observed loss is NaN/Inf (one read, only on a step the scaler skipped: its
    overflow of the scaled gradients leaves the loss finite, a NaN from the forward does not)."""
    if isinstance(loss, torch.Tensor):
        return not bool(torch.isfinite(loss).all())
    return loss is not None and not math.isfinite(loss)
