"""gradhealth in a Hugging Face ``Trainer`` run: ``GradHealthCallback``
(``pip install 'gradhealth[transformers]'``: transformers and accelerate, which its Trainer needs).

::

    from gradhealth.integrations.transformers import GradHealthCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[GradHealthCallback("runs/exp1", on_nonfinite="skip")])
    trainer.train()

The order the Trainer (transformers 4.40 to 5.x) runs one optimizer step in, and what gradhealth
does there::

    on_train_begin              attach gradhealth.watch(model, optimizer) (accelerate's wrapper unwrapped);
                                resumed (state.global_step > 0): load the watcher's state saved
                                with that checkpoint
    on_step_begin               (first micro-batch of the window)
    per micro-batch: training_step: model(**inputs) -> loss.backward()
                                the watcher's forward/backward hooks; the output's loss is kept
    on_substep_end              (every micro-batch but the window's last)
    clip_grad_norm_(max_grad_norm=1.0)   one NaN anywhere makes every gradient NaN here
    on_pre_optimizer_step
    optimizer.step()            the watcher's step pre-hook: statistics, guard, forensic replay
    on_optimizer_step           observe the step's loss: the mean of its micro-batches' losses (their
                                sum when the model took num_items_in_batch: already window-normalised)
    model.zero_grad(); global_step += 1
    on_step_end                 stop the run when the guard raised (control.should_training_stop)
    on_log                      gradhealth/<kind> event counts added to the Trainer's logs (a step's
                                events are complete when the next step's forward starts, so they
                                appear in the log after that step's own). The Trainer puts its
                                report_to integrations before user callbacks, so they do not see
                                these counts: export the run store instead (gradhealth export)
    on_save                     (after the Trainer wrote checkpoint-N) the watcher's state_dict()
                                as JSON in checkpoint-N/gradhealth_watch.json
    on_train_end                remove the watcher (flush and close the run store)

Where the NaN came from. The Trainer clips by the global norm before any callback sees the
gradients: with one NaN entry the global norm is NaN and the clip coefficient
``max_norm / (nan + eps)`` multiplies **every** gradient, so at ``on_pre_optimizer_step`` every
layer is NaN. gradhealth does not read the source off the gradients: forensic replay re-runs the
step's forward and backward at the optimizer's pre-hook, before the update, with per-module
checks, and names the first module whose output went non-finite; the ``nonfinite`` event's
layer is that module. The per-layer ``grad_norm`` is taken before clipping (from samples taken at
the end of the backward pass), and the loss is observed raw, so a NaN loss is stored as NaN even
though the Trainer's ``logging_nan_inf_filter`` logs a finite average in its place.

Under ``on_nonfinite="raise"`` the guard's ``NonFiniteError`` would surface inside
``optimizer.step()`` and end ``train()`` with a traceback; the callback catches it there, leaves
the step undone, keeps it in ``callback.error`` and sets ``control.should_training_stop``.
Resume. ``trainer.train(resume_from_checkpoint=...)`` continues the watcher's step numbers and
detector baselines: at every checkpoint the callback writes :meth:`Watcher.state_dict` as plain
JSON (``gradhealth_watch.json``, one file per process; never a pickle) into the checkpoint folder,
and a resumed ``train()`` reads it back from ``args.output_dir/checkpoint-<global_step>``. (The
Trainer's own ``ExportableState`` mechanism is not used: it restores only with
``restore_callback_states_from_checkpoint=True``, replaces the callback object the user holds by a
new one built from JSON arguments, and the watch options are not JSON.) A checkpoint resumed from
elsewhere, or one saved without the callback, has no such file: the watcher then continues at the
Trainer's step with empty detector windows and says so in a ``WatchWarning``. A resumed run
appends to the same run store (``appending_store``): the steps from the checkpoint on are
replaced by the re-done ones.

The Trainer does not hand callbacks the accelerator, so with fp16 pass the GradScaler yourself
if you have it (``scaler=``); steps the scaler skipped then count as such.
"""

from __future__ import annotations

import json
import os

from ..errors import ModelError, ParameterError
from ._callback import WatchingCallback, continue_fresh, real_class
from ._optim import stopping, wrap_step

__all__ = ["GradHealthCallback"]

TRANSFORMERS_FIX = "pip install 'gradhealth[transformers]' (or pip install transformers accelerate)"
STATE_FILE = "gradhealth_watch.json"
_FORMAT = "gradhealth-watch-state/1"


def _state_path(args, state) -> str:
    """Where the watcher's state of checkpoint ``state.global_step`` lives (one file per process)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    name = STATE_FILE if state.is_world_process_zero else f"gradhealth_watch.rank{args.process_index}.json"
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", name)


def _read_state(path: str, global_step: int) -> tuple[dict | None, str]:
    """The watcher's state saved at ``global_step`` (plain JSON), or None and why not."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not (isinstance(data, dict) and data.get("format") == _FORMAT and data.get("global_step") == global_step
                and isinstance(data.get("watcher"), dict)):
            raise ValueError(f"not a gradhealth watcher state of step {global_step}")
        return data["watcher"], ""
    except (OSError, ValueError) as exc:
        return None, "no such file" if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {exc}"


def _continue(watcher, saved: dict | None, why: str, global_step: int, path: str) -> None:
    """Continue ``watcher`` (created to append to its run store) at the Trainer's ``global_step``,
    from the saved state or, when there is none, from a fresh one (see ``continue_fresh``)."""
    if saved is not None:
        try:
            watcher.load_state_dict(saved)
            return
        except ParameterError as exc:
            why = str(exc)
    continue_fresh(watcher, global_step, path, why,
                   "resume from a checkpoint saved under GradHealthCallback in args.output_dir.")


def _callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ModelError("GradHealthCallback for the Hugging Face Trainer needs the transformers package, which "
                         f"is not installed. Fix: {TRANSFORMERS_FIX}.") from None
    return TrainerCallback


def _real_class():
    return real_class(globals(), "_HFGradHealthCallback", GradHealthCallback, _callback_base)


def __getattr__(name):   # unpickling in another process finds the class by name
    if name == "_HFGradHealthCallback":
        return _real_class()
    raise AttributeError(name)


def _output_loss(out):
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None and isinstance(out, (tuple, list)) and out and getattr(out[0], "ndim", None) == 0:
        loss = out[0]
    return loss if getattr(loss, "ndim", None) == 0 else None


class GradHealthCallback(WatchingCallback):
    """A ``transformers.TrainerCallback`` that runs :func:`gradhealth.watch` on the trained model.

    Args:
        run_dir: the run store's directory (``RUN_DIR/run.sqlite``), or None (in memory).
        **watch_options: any keyword option of :func:`gradhealth.watch` (``on_nonfinite``,
            ``every``, ``scaler``, ...).

    Attributes:
        watcher: the :class:`~gradhealth.watch.Watcher` of the current (or last) ``train()``.
        error: the ``NonFiniteError`` that stopped training under ``on_nonfinite="raise"``, else None.

    Raises:
        ModelError: transformers is not installed (the message names the install command).
    """

    def __new__(cls, *args, **kwargs):
        if cls is GradHealthCallback:
            cls = _real_class()
        return super().__new__(cls)

    def __init__(self, run_dir=None, **watch_options):
        _callback_base()
        super().__init__(run_dir, watch_options)
        self._losses: list = []
        self._collect = True

    # -- attach / detach ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from ..watch import watch
        from ..watch.runlog import appending_store

        self._detach()
        opt = getattr(optimizer, "optimizer", optimizer)   # accelerate's AcceleratedOptimizer
        if state.global_step == 0:
            self.watcher = watch(model, opt, run_dir=self.run_dir, **self.watch_options)
        else:   # resumed: the same run store, continued from the checkpoint's step
            path = _state_path(args, state)
            saved, why = _read_state(path, state.global_step)
            with appending_store():
                self.watcher = watch(model, opt, run_dir=self.run_dir, **self.watch_options)
            _continue(self.watcher, saved, why, state.global_step, path)
        self.error, self._losses, self._collect = None, [], True
        self._events.reset()
        if opt is not None:
            self._undo.append(wrap_step(opt, lambda inner: stopping(inner, self._stop)))
        self._undo.append(model.register_forward_hook(self._keep_loss, with_kwargs=True).remove)

    def _stop(self, exc) -> None:
        self.error = exc

    def _keep_loss(self, module, args, kwargs, out):
        if self._collect and module.training:
            loss = _output_loss(out)
            if loss is not None:
                # a model the Trainer hands num_items_in_batch (transformers' models: they take
                # **kwargs) already divides each micro-batch's loss by the whole window's token
                # count: the window's loss is then their sum, not their mean
                self._losses.append((loss.detach(), kwargs.get("num_items_in_batch") is not None))

    def on_save(self, args, state, control, **kwargs):
        """Write the watcher's state next to the checkpoint the Trainer just saved (JSON, atomically)."""
        w = self.watcher
        if w is None or not w.active:
            return
        path = _state_path(args, state)
        try:
            data = {"format": _FORMAT, "global_step": state.global_step, "watcher": w.state_dict()}
            text = json.dumps(data, allow_nan=False)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        except Exception as exc:   # a failed side file must not stop training
            w._internal("transformers.on_save", exc)

    def on_train_end(self, args, state, control, **kwargs):
        self._detach()

    # -- per step ----------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._collect = False   # a forensic replay's forward is not a training loss

    def on_optimizer_step(self, args, state, control, **kwargs):
        w = self.watcher
        if w is not None and w.active and self._losses:
            losses = [v for v, _ in self._losses]
            total = losses[0] if len(losses) == 1 else sum(losses[1:], losses[0])
            w.observe(total if all(n for _, n in self._losses) else total / len(losses))
        self._losses, self._collect = [], True

    def on_step_end(self, args, state, control, **kwargs):
        if self.error is not None:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.watcher is None or logs is None:
            return
        self._events.update(self.watcher)
        counts = self._events.metrics()
        logs.update(counts)   # seen by the callbacks after this one (the printer / progress bar)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(counts)   # the Trainer stored its copy before on_log
