"""The optimizers a watcher follows: which it watches, which it rejected, and their parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._text import quoted
from ..errors import ParameterError
from ..events import Event

__all__ = ["Optimizers", "learning_rate", "structure_event"]


@dataclass(slots=True)
class Optimizers:
    """The optimizers watched (the first one is the *primary*: its step ends an iteration),
    those seen through global hooks and rejected, and each one's model parameters (cached
    per group structure)."""

    global_hooks: bool = False
    watched: list[Any] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    rejected: set[int] = field(default_factory=set)
    _params: dict[int, tuple] = field(default_factory=dict)   # id(opt) -> (group sizes, model params)

    @staticmethod
    def owns(opt, param_pos: dict[int, int]) -> bool:
        """Whether ``opt`` steps at least one of the model's parameters."""
        return any(id(p) in param_pos for g in opt.param_groups for p in g["params"])

    @staticmethod
    def check_owned(opt, param_pos: dict[int, int]) -> None:
        """ParameterError unless ``opt`` steps a parameter of the watched model."""
        if not Optimizers.owns(opt, param_pos):
            raise ParameterError("optimizer", "gradhealth.watch", "an optimizer over parameters of the watched model",
                                 f"{type(opt).__name__} with none of them",
                                 "pass the optimizer built from model.parameters().")

    def add(self, opt) -> None:
        self.watched.append(opt)
        self.ids.add(id(opt))

    def is_primary(self, opt) -> bool:
        return bool(self.watched) and opt is self.watched[0]

    def cached(self, opt) -> list | None:
        """The optimizer's model parameters from the cache, or None when its groups changed
        since (then call :meth:`refresh`)."""
        sig = tuple(len(g["params"]) for g in opt.param_groups)
        c = self._params.get(id(opt))
        if c is not None and c[0] == sig:
            return c[1]
        return None

    def unknown(self, opt, param_pos: dict[int, int]) -> int:
        """How many of ``opt``'s parameters the layer map does not know (new parameters)."""
        return sum(1 for g in opt.param_groups for p in g["params"] if id(p) not in param_pos)

    def refresh(self, opt, param_pos: dict[int, int]) -> list:
        """Cache and return ``opt``'s parameters that belong to the model."""
        sig = tuple(len(g["params"]) for g in opt.param_groups)
        mine = [p for g in opt.param_groups for p in g["params"] if id(p) in param_pos]
        self._params[id(opt)] = (sig, mine)
        return mine

    def forget_params(self) -> None:
        self._params.clear()


def learning_rate(opt) -> float | None:
    """The first group's learning rate as a float (None if it has none or it cannot be read)."""
    try:
        lr = opt.param_groups[0].get("lr")
        return None if lr is None else float(lr)
    except Exception:
        return None


def structure_event(step: int, n_new: int, new_layers: list[str]) -> Event:
    """The ``internal`` info event of a model that grew parameters mid-run."""
    shown = ", ".join(quoted(n) for n in new_layers[:5])
    return Event(step=step, kind="internal", layer=None, severity="info",
                 message=(f"The model changed structure at step {step}: {n_new} new parameters"
                          + (f" in {len(new_layers)} new layers ({shown})" if new_layers else "")
                          + "; they are measured from now on."),
                 evidence={"new_params": n_new, "new_layers": new_layers})
