"""What one probe is asked to do (internal): the checked keyword options, the batch, the scope.

:func:`gradhealth.probe.probe` checks its arguments once into these frozen records; the passes
(``core``) and the Jacobian driver (``jacobian.model_spectrum``) read them instead of a long
list of parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from .._checks import check_choice, check_int
from ..errors import ParameterError
from . import _analysis as A

#: The name every ParameterError of the probe gives as its owner.
OWNER = "probe"



ProbeMode = Literal["train", "eval", "as_is"]
"""How ``probe`` sets the model's mode for the measurement (restored afterwards)."""

@dataclass(frozen=True)
class ProbeOptions:
    """The keyword options of :func:`~gradhealth.probe.probe` (see there for each one).

    Built from the raw arguments, then :meth:`checked`; ``patterns`` is the list form of
    ``layers`` (``None``: every layer), set once the layers are selected.
    """

    mode: ProbeMode = "train"
    seed: int = 0
    n_probes: int = 2
    jacobian: bool = True
    jacobian_batch: int | None = 8
    lanczos_steps: int = 16
    top_k: int = 3
    max_params: int | None = 200_000_000
    thresholds: A.Thresholds | None = None
    patterns: list[str] | None = None

    def checked(self) -> ProbeOptions:
        """The same options, each checked against its rule (ParameterError otherwise), in the
        order probe() documents them; ``thresholds=None`` becomes the default thresholds."""
        jacobian_batch, max_params = self.jacobian_batch, self.max_params
        mode = check_choice(self.mode, "mode", OWNER, get_args(ProbeMode))
        seed = check_int(self.seed, "seed", OWNER)
        n_probes = check_int(self.n_probes, "n_probes", OWNER, min_value=1)
        lanczos_steps = check_int(self.lanczos_steps, "lanczos_steps", OWNER, min_value=1)
        top_k = check_int(self.top_k, "top_k", OWNER, min_value=1)
        if jacobian_batch is not None:
            jacobian_batch = check_int(jacobian_batch, "jacobian_batch", OWNER, min_value=1,
                                       fix="pass jacobian_batch=8 (or None for the whole batch).")
        if max_params is not None:
            max_params = check_int(max_params, "max_params", OWNER, min_value=1,
                                   fix="pass max_params=None to disable the size check.")
        th = self.thresholds if self.thresholds is not None else A.DEFAULT_THRESHOLDS
        if not isinstance(th, A.Thresholds):
            raise ParameterError("thresholds", OWNER, "a gradhealth.probe.Thresholds", type(th).__name__,
                                 "pass Thresholds(ratio=..., ...) or leave it out.")
        return replace(self, mode=mode, seed=seed, n_probes=n_probes, jacobian_batch=jacobian_batch,
                       lanczos_steps=lanczos_steps, top_k=top_k, max_params=max_params, thresholds=th)


@dataclass(frozen=True)
class Batch:
    """What the model is called with (``model(*args, **kwargs)``) and what the loss reads."""

    args: tuple
    kwargs: dict
    target: Any = None
    loss_fn: Any = None


@dataclass(frozen=True)
class Scope:
    """Which modules are analysed.

    Attributes:
        names: module -> qualified name (``"(root)"`` for the model itself).
        selected: the parameter-owning modules the ``layers`` patterns select, in model order.
        n_params: parameters of the whole model.
    """

    names: dict
    selected: list
    n_params: int
