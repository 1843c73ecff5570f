"""The options of :func:`gradhealth.watch`, their defaults and their rules, in one place.

:class:`WatchConfig` is what :func:`~gradhealth.watch.watch` (and ``gradhealth run``) turn
their keyword arguments into: a frozen dataclass that validates every option once, in
``__post_init__``, and normalises it (schedules become :class:`~gradhealth.watch.schedule.Schedule`,
``detectors`` one :class:`~gradhealth.detectors.Detector`). The watcher reads only the
config, so an option's rule is written here and nowhere else.

The string options are :data:`typing.Literal` aliases, so a type checker catches
``on_nonfinite="skp"`` at the call site::

    OnNonFinite = Literal["warn", "skip", "rollback", "raise"]
    RollbackStorage = Literal["memory", "disk"]
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Literal, Union, get_args

import torch

from .._checks import check_choice, check_int, check_real
from ..detectors import default_detectors
from ..detectors.base import Detector
from ..errors import ParameterError
from .schedule import Schedule, as_schedule, log_spaced
from .schedule import every as _every

__all__ = ["WatchConfig", "check_model", "check_optimizer", "as_optimizers", "as_loss",
           "OnNonFinite", "RollbackStorage", "ScheduleLike", "ON_NONFINITE_CHOICES",
           "ROLLBACK_STORAGE_CHOICES", "default_detail_schedule"]

OWNER = "gradhealth.watch"

OnNonFinite = Literal["warn", "skip", "rollback", "raise"]
"""What to do with a step whose gradients are NaN/Inf (see :mod:`gradhealth.watch.guard`)."""
RollbackStorage = Literal["memory", "disk"]
"""Where ``on_nonfinite="rollback"`` keeps its known-good snapshot."""
ScheduleLike = Union[int, Literal["log"], Schedule, Callable[[int], bool]]
"""An int N (every N steps), ``"log"`` (log-spaced), a Schedule or a ``step -> bool`` callable."""

ON_NONFINITE_CHOICES: tuple[str, ...] = get_args(OnNonFinite)
ROLLBACK_STORAGE_CHOICES: tuple[str, ...] = get_args(RollbackStorage)


def default_detail_schedule() -> Schedule:
    """Steps 0, 1, 2, 4, ..., 64 and then every 100th step."""
    return log_spaced(until=64) | _every(100)


def _as_detector(detectors: Detector | Iterable[Detector] | None) -> Detector:
    if detectors is None:
        return default_detectors()
    if isinstance(detectors, Detector):
        return detectors
    from ..detectors import chain

    dl = list(detectors)
    if not all(isinstance(d, Detector) for d in dl):
        raise ParameterError("detectors", OWNER, "a Detector, a list of Detectors or None",
                             detectors, "pass e.g. [gradhealth.detectors.nonfinite()].")
    return chain(*dl)


@dataclass(frozen=True, eq=False)
class WatchConfig:
    """Every option of :func:`~gradhealth.watch.watch`, validated and normalised once.

    The meaning of each option is documented at :func:`~gradhealth.watch.watch`; the
    defaults here are the defaults there (a test keeps them equal). After construction
    ``every`` and ``detail_every`` are :class:`~gradhealth.watch.schedule.Schedule` objects
    (``detail_every=None`` becomes :func:`default_detail_schedule`), ``detectors`` is one
    :class:`~gradhealth.detectors.Detector` (a list is chained), and the numbers are plain
    ``int`` / ``float``.

    Raises:
        ParameterError: an option breaks its rule (the message names the option, the rule,
            the value and a fix).
    """

    run_dir: str | PathLike | None = None
    on_nonfinite: OnNonFinite = "warn"
    every: ScheduleLike = 1
    detail_every: ScheduleLike | None = None
    scaler: Any = None
    detectors: Detector | Iterable[Detector] | None = None
    replay: bool = True
    max_consecutive_skips: int | None = 10
    rollback_every: int = 100
    rollback_lr_factor: float | None = 0.5
    rollback_storage: RollbackStorage = "memory"
    update_ratio: bool = True
    forward_stats: bool = True
    history_size: int = 1000
    meta: dict | None = field(default=None)

    def __post_init__(self) -> None:
        # the order of the checks is the order of the options in watch()'s signature, so the
        # first wrong option is the one reported
        put = object.__setattr__
        if self.run_dir is not None and not isinstance(self.run_dir, (str, PathLike)):
            raise ParameterError("run_dir", OWNER, "a path (str or os.PathLike) or None", self.run_dir,
                                 "pass run_dir='runs/exp1', or leave it out to keep nothing on disk.")
        put(self, "on_nonfinite", check_choice(self.on_nonfinite, "on_nonfinite", OWNER, ON_NONFINITE_CHOICES,
                                               fix="pass on_nonfinite='warn', 'skip', 'rollback' or 'raise'."))
        put(self, "every", as_schedule(self.every, "every", OWNER))
        put(self, "detail_every", default_detail_schedule() if self.detail_every is None
            else as_schedule(self.detail_every, "detail_every", OWNER))
        if self.max_consecutive_skips is not None:
            put(self, "max_consecutive_skips", check_int(self.max_consecutive_skips, "max_consecutive_skips",
                                                         OWNER, min_value=0))
        put(self, "rollback_every", check_int(self.rollback_every, "rollback_every", OWNER, min_value=1))
        if self.rollback_lr_factor is not None:
            put(self, "rollback_lr_factor", check_real(
                self.rollback_lr_factor, "rollback_lr_factor", OWNER, low=0.0, high=1.0, low_inclusive=False,
                fix="pass a factor in (0, 1], e.g. 0.5, or None to keep the lr."))
        put(self, "rollback_storage", check_choice(self.rollback_storage, "rollback_storage", OWNER,
                                                   ROLLBACK_STORAGE_CHOICES))
        if self.rollback_storage == "disk" and self.run_dir is None:
            raise ParameterError("rollback_storage", OWNER, "'memory' when no run_dir is given",
                                 "disk", "pass run_dir='runs/exp1' or rollback_storage='memory'.")
        put(self, "history_size", check_int(self.history_size, "history_size", OWNER, min_value=1))
        s = self.scaler
        if s is not None and not (hasattr(s, "get_scale") and hasattr(s, "update")):
            raise ParameterError("scaler", OWNER, "a torch.amp.GradScaler or None", type(s).__name__,
                                 "pass the GradScaler you call scaler.step(optimizer) with.")
        put(self, "detectors", _as_detector(self.detectors))
        for name in ("replay", "update_ratio", "forward_stats"):
            put(self, name, _check_flag(getattr(self, name), name))
        if self.meta is not None and not (isinstance(self.meta, dict) and all(isinstance(k, str) for k in self.meta)):
            got = "a dict with non-string keys" if isinstance(self.meta, dict) else type(self.meta).__name__
            raise ParameterError("meta", OWNER, "a dict with string keys or None", got,
                                 "pass meta={'lr': 1e-3, 'seed': 0}.")

    @property
    def guarded(self) -> bool:
        """Whether a :class:`~gradhealth.remedies.StepGuard` checks every step (all policies
        but ``"warn"``)."""
        return self.on_nonfinite in ("skip", "rollback", "raise")


def _check_flag(value: Any, name: str) -> bool:
    """A yes/no option: a bool (``np.bool_`` too), never a truthy string ("no" is not False)."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ParameterError(name, OWNER, "True or False", value, f"pass {name}=True or {name}=False.")


def resolve_config(config: "WatchConfig | None", options: dict) -> "WatchConfig":
    """``Watcher(model, optimizer, config=None, **options)``'s configuration: ``config`` or one built
    from ``options`` (ParameterError when both are given)."""
    if config is None:
        return WatchConfig(**options)
    if options:
        raise ParameterError("config", "Watcher", "a WatchConfig or keyword options, not both",
                             f"a WatchConfig and {sorted(options)}",
                             "pass Watcher(model, optimizer, WatchConfig(...)) or gradhealth.watch(...).")
    return config


def check_model(model) -> None:
    """ParameterError unless ``model`` is an ``nn.Module`` (checked before any option)."""
    if not isinstance(model, torch.nn.Module):
        raise ParameterError("model", OWNER, "a torch.nn.Module", type(model).__name__,
                             "pass the model itself, e.g. gradhealth.watch(model, optimizer).")


def check_optimizer(o, owner: str = OWNER) -> None:
    """ParameterError unless ``o`` looks like a ``torch.optim.Optimizer``."""
    if not (hasattr(o, "param_groups") and hasattr(o, "step")):
        raise ParameterError("optimizer", owner, "a torch.optim.Optimizer, a list of them, or None",
                             type(o).__name__, "pass the optimizer that steps the model.")


def as_optimizers(optimizer) -> list:
    """``watch``'s ``optimizer`` argument as a list (None: empty), each one checked."""
    opts = [] if optimizer is None else (list(optimizer) if isinstance(optimizer, (list, tuple))
                                         else [optimizer])
    if optimizer is not None and not opts:
        raise ParameterError("optimizer", OWNER, "a torch.optim.Optimizer, a list of them, or None",
                             f"an empty {type(optimizer).__name__}",
                             "pass the optimizer, or None to adopt the first one that steps the model.")
    for o in opts:
        check_optimizer(o)
    return opts


def as_loss(loss) -> Any:
    """``observe``'s argument as a detached one-element tensor (its shape kept: every reader
    takes the one value) or a float (ParameterError otherwise)."""
    rule = "a scalar (a tensor with one element or a float)"
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ParameterError("loss", "Watcher.observe", rule, f"a tensor of shape {tuple(loss.shape)}",
                                 "pass the reduced loss, e.g. watcher.observe(loss) with "
                                 "loss = loss_fn(out, y) (reduction='mean'), or loss.mean().")
        if loss.layout != torch.strided:   # (a sparse 0-dim loss: its one value, dense)
            loss = loss.to_dense()
        return loss.detach()
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise ParameterError("loss", "Watcher.observe", rule, type(loss).__name__,
                             "pass loss (a 0-dim tensor) or loss.item().")
    try:
        return float(loss)
    except OverflowError:   # an integer beyond float's range (10**400)
        raise ParameterError("loss", "Watcher.observe", rule + " within float range",
                             f"an integer of {len(str(abs(int(loss))))} digits",
                             "pass the loss as a float or a tensor.") from None
    except (TypeError, ValueError):
        raise ParameterError("loss", "Watcher.observe", rule, type(loss).__name__,
                             "pass loss (a 0-dim tensor) or loss.item().") from None
