"""``gradhealth.watch(model, optimizer, ...)``: the public entry point of the watch pillar, one
keyword option per :class:`~gradhealth.watch.config.WatchConfig` field, plus ``resume``."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike

from torch import nn

from ..detectors.base import Detector
from .config import OnNonFinite, RollbackStorage, ScheduleLike, WatchConfig, check_model
from .runlog import appending_store
from .watcher import Watcher

__all__ = ["watch"]

def watch(model: nn.Module, optimizer=None, *, run_dir: str | PathLike | None = None,  # noqa: PLR0913
          # (the public keyword options, one per WatchConfig field, spelled out for help() and type checkers)
          on_nonfinite: OnNonFinite = "warn", every: ScheduleLike = 1, detail_every: ScheduleLike | None = None,
          scaler=None, detectors: Detector | Iterable[Detector] | None = None, replay: bool = True,
          max_consecutive_skips: int | None = 10, rollback_every: int = 100,
          rollback_lr_factor: float | None = 0.5, rollback_storage: RollbackStorage = "memory",
          update_ratio: bool = True, forward_stats: bool = True, history_size: int = 1000,
          meta: dict | None = None, resume: dict | None = None) -> Watcher:
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
        resume: a :meth:`Watcher.state_dict` saved with a checkpoint, to continue that run:
            the step numbers, detector windows and guard counters go on from it, and the
            watcher appends to ``run_dir``'s existing store (the steps from the resumed one on,
            which the interrupted process may have recorded after its checkpoint, are
            replaced by the re-done ones), so ``load_run`` reads one continuous run.

    Returns:
        The attached :class:`Watcher`.

    Raises:
        ModelError: the model (or some of its parameters) is already watched.
        ParameterError: an argument breaks its rule (``resume`` included: not a saved state).
    """
    check_model(model)   # the model is checked first, as before the options were a dataclass
    config = WatchConfig(run_dir=run_dir, on_nonfinite=on_nonfinite, every=every, detail_every=detail_every,
                         scaler=scaler, detectors=detectors, replay=replay,
                         max_consecutive_skips=max_consecutive_skips, rollback_every=rollback_every,
                         rollback_lr_factor=rollback_lr_factor, rollback_storage=rollback_storage,
                         update_ratio=update_ratio, forward_stats=forward_stats, history_size=history_size,
                         meta=meta)
    if resume is None:
        return Watcher(model, optimizer, config)
    with appending_store():
        w = Watcher(model, optimizer, config)
    try:
        w.load_state_dict(resume)
    except Exception:
        w.remove()     # a state that does not load: no half-resumed watcher stays attached
        raise
    return w
