"""gradhealth in a Lightning run: ``GradHealthCallback`` (``pip install 'gradhealth[lightning]'``).

::

    from gradhealth.integrations.lightning import GradHealthCallback

    trainer = lightning.pytorch.Trainer(callbacks=[GradHealthCallback("runs/exp1", on_nonfinite="skip")])
    trainer.fit(module, loader)

The hooks it uses, in the order Lightning 2.x runs them (automatic optimization)::

    on_fit_start                    attach gradhealth.watch(pl_module, trainer.optimizers, scaler=...);
                                    resumed (ckpt_path): append to the run store, load the saved state
    on_train_start                  resumed without a saved state: continue at trainer.global_step
    per batch:
      on_train_batch_start
      optimizer_step -> optimizer.step(closure)      (only on the last batch of an accumulation window)
        closure: training_step, zero_grad, on_before_backward, backward, on_after_backward
        on_before_optimizer_step    (gradients complete: unscaled under AMP, before clipping)
        clip_gradients
        the optimizer's step pre-hook: gradhealth's statistics, guard and replay
      on_train_batch_end            observe the step's loss, log new events through pl_module.log_dict
    on_fit_end / on_exception       remove the watcher (flush and close the run store)

Three things make it work as in a plain loop:

- **The closure.** Lightning's default precision plugin calls ``optimizer.step(closure=...)`` and
  the closure runs the forward and backward *inside* ``step``, after torch's step pre-hooks: a
  pre-hook would see the previous iteration's gradients. The callback therefore wraps
  ``optimizer.step`` (on the torch optimizer, under gradhealth's own guard) so that the closure
  runs first and the step, with its hooks, after it. The result is the same update for every
  optimizer that calls its closure once at the start of ``step`` (SGD, Adam, AdamW, ...);
  ``torch.optim.LBFGS`` re-evaluates the closure and keeps it: the watcher's step pre-hook runs
  the first evaluation before it measures, as for any ``optimizer.step(closure)``.
- **The steps.** gradhealth's step is the optimizer step (``trainer.global_step``): with
  ``accumulate_grad_batches=N`` the N forward/backward passes of a window are one step, as in a
  plain loop with accumulation. ``training_step`` should call ``self(...)`` (the module's
  ``forward``): gradhealth keeps the batch for forensic replay, and ends an iteration, at the
  LightningModule's own forward.
- **The stop.** Under ``on_nonfinite="raise"`` the guard raises ``NonFiniteError`` inside
  ``optimizer.step`` (Lightning would tear the run down with it). The callback catches it there,
  leaves the step undone, sets ``trainer.should_stop = True`` (the fit loop ends after that batch)
  and keeps the error in ``callback.error``; the diagnosis is in the run store and in
  ``callback.watcher.events``.

With ``precision="16-mixed"`` on a GPU Lightning's ``MixedPrecision`` plugin owns a GradScaler;
the callback passes it to ``watch`` (``scaler=trainer.precision_plugin.scaler``) so scaler-skipped
steps are recorded as such. Note that on CPU Lightning turns ``16-mixed`` into bf16 (no scaler).

Events are logged as ``gradhealth/<kind>`` (the running count of each kind) with
``pl_module.log_dict`` on the step where they appear, so every Lightning logger gets them.
"""

from __future__ import annotations

from ..errors import ModelError, ParameterError
from ._callback import WatchingCallback, continue_fresh, real_class
from ._optim import closure_first, stopping, wrap_step

__all__ = ["GradHealthCallback"]

LIGHTNING_FIX = "pip install 'gradhealth[lightning]' (or pip install lightning)"


def _callback_base():
    try:
        from lightning.pytorch import Callback
    except ImportError:
        raise ModelError("GradHealthCallback for Lightning needs the lightning package, which is not installed. "
                         f"Fix: {LIGHTNING_FIX}.") from None
    return Callback


def _real_class():
    return real_class(globals(), "_LightningGradHealthCallback", GradHealthCallback, _callback_base)


def __getattr__(name):   # unpickling in a spawned process finds the class by name
    if name == "_LightningGradHealthCallback":
        return _real_class()
    raise AttributeError(name)


class GradHealthCallback(WatchingCallback):
    """A ``lightning.pytorch.Callback`` that runs :func:`gradhealth.watch` on the fitted module.

    Args:
        run_dir: the run store's directory (``RUN_DIR/run.sqlite``), or None (in memory).
        **watch_options: any keyword option of :func:`gradhealth.watch` (``on_nonfinite``,
            ``every``, ``detail_every``, ``detectors``, ...). ``scaler`` defaults to the precision
            plugin's GradScaler, if it has one.

    Attributes:
        watcher: the :class:`~gradhealth.watch.Watcher` of the current (or last) fit.
        error: the ``NonFiniteError`` that stopped the fit under ``on_nonfinite="raise"``, else None.

    Raises:
        ModelError: lightning is not installed (the message names the install command).
    """

    def __new__(cls, *args, **kwargs):
        if cls is GradHealthCallback:
            cls = _real_class()
        return super().__new__(cls)

    def __init__(self, run_dir=None, **watch_options):
        _callback_base()
        super().__init__(run_dir, watch_options)
        self._stepped = False
        self._loss = None
        self._resume: dict | None = None
        self._fresh_at_start: str | None = None

    # -- checkpoints: Lightning saves and restores a callback's state_dict with the checkpoint
    def state_dict(self) -> dict:
        """The watcher's :meth:`~gradhealth.watch.Watcher.state_dict` (plain data: it loads
        with ``weights_only=True``), so a run resumed from ``ckpt_path`` continues its steps and
        detector baselines."""
        if self.watcher is not None:
            return {"watcher": self.watcher.state_dict()}   # counts the step just taken
        return {"watcher": self._resume} if self._resume is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        state = (state_dict or {}).get("watcher")
        if state is None:
            return
        if self.watcher is not None and self.watcher.active:
            self.watcher.load_state_dict(state)
        else:
            self._resume = state

    # -- attach / detach ---------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        from ..watch import watch
        from ..watch.runlog import appending_store

        self._detach()
        opts = list(trainer.optimizers)
        options = dict(self.watch_options)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            options.setdefault("scaler", scaler)
        for opt in opts:
            if type(opt).__name__ != "LBFGS":
                self._undo.append(wrap_step(opt, closure_first))
        self._fresh_at_start = None
        if self._resume is None and getattr(trainer, "ckpt_path", None) is None:
            self.watcher = watch(pl_module, opts or None, run_dir=self.run_dir, **options)
        else:   # restored from a checkpoint (ckpt_path=...): continue the steps and the run store
            with appending_store():
                self.watcher = watch(pl_module, opts or None, run_dir=self.run_dir, **options)
            self._fresh_at_start = "the checkpoint holds no GradHealthCallback state"
            if self._resume is not None:
                try:
                    self.watcher.load_state_dict(self._resume)
                    self._fresh_at_start = None
                except ParameterError as exc:
                    self._fresh_at_start = str(exc)
            self._resume = None
        for opt in opts:   # outermost: turn the guard's NonFiniteError into a stop
            self._undo.append(wrap_step(opt, lambda inner, _t=trainer: stopping(inner, lambda e: self._stop(_t, e))))
        self.error = None
        self._events.reset()
        self._stepped, self._loss = False, None

    def on_train_start(self, trainer, pl_module) -> None:
        # without a saved state, continue at the restored global_step (known from here on)
        if self._fresh_at_start is not None and self.watcher is not None and self.watcher.active:
            why, self._fresh_at_start = self._fresh_at_start, None
            continue_fresh(self.watcher, trainer.global_step, str(trainer.ckpt_path), why,
                           "resume from a checkpoint saved with GradHealthCallback among the callbacks.")

    def _stop(self, trainer, exc) -> None:
        self.error = exc
        trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self._detach()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._detach()

    # -- per step ----------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        w = self.watcher
        if w is None or not w.active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and getattr(loss, "numel", lambda: 0)() == 1:
            # Lightning's outputs["loss"] is already divided by accumulate_grad_batches: the sum
            # over the window is the loss whose gradient the step applies
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
        if not self._stepped:
            return
        self._stepped = False
        if self._loss is not None:
            w.observe(self._loss)
        self._loss = None
        # the watcher settles its steps a few at a time (events of a non-finite or skipped step
        # at once): counted as they settle, all of them at an epoch's last batch and at a stop
        max_steps = getattr(trainer, "max_steps", -1)
        last = bool(getattr(trainer, "is_last_batch", True) or getattr(trainer, "should_stop", True)
                    or (isinstance(max_steps, int) and 0 <= max_steps <= trainer.global_step))
        self._log_events(pl_module, settle=last)

    def _log_events(self, pl_module, settle: bool = True) -> None:
        if not self._events.update(self.watcher, settle=settle):
            return
        try:
            pl_module.log_dict({k: float(v) for k, v in self._events.metrics().items()},
                               on_step=True, on_epoch=False, prog_bar=False, logger=True)
        except Exception as exc:   # a logger's failure must not stop training
            self.watcher._internal("lightning.log_dict", exc)
