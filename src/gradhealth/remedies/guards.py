"""Skip optimizer steps whose gradients are not finite.

The model is optax's ``apply_if_finite``: a wrapper around the optimizer that lets a step
through only when every gradient is finite, keeps a budget of consecutive skips, and fails
loudly when the budget is spent (a model that produces NaN gradients ten steps in a row will
not recover by skipping more).

One mechanism serves both the stand-alone wrapper :func:`skip_nonfinite` and the guard of
:func:`gradhealth.watch` (which passes ``on_skip`` to turn each skip into an Event).

How a step is skipped
---------------------
:class:`StepGuard` replaces ``optimizer.step`` *on the instance* (a bound method; the class
is not touched) by a guarded step that calls the original only when the gradients are
finite. On a skipped step the optimizer's own code does not run at all, so for every
optimizer -- SGD with momentum and weight decay, Adam, AdamW, fused or foreach variants,
LBFGS, third-party optimizers -- the parameters, the optimizer state (moments, per-parameter
``step`` counters, LBFGS's history) and ``param_groups`` are bitwise unchanged, and step
pre/post hooks registered on the optimizer do not fire.

The alternative, clearing ``p.grad`` in a ``register_step_pre_hook`` so that the optimizer
finds no parameter to update, does leave SGD/Adam/AdamW untouched (they only visit
parameters with a gradient), but not optimizers that keep global counters or evaluate a
closure inside ``step``, and it cannot see the gradients a closure computes. Hence the
instance method.

Cost: deciding whether to skip needs the one boolean on the host, i.e. one device-to-host
synchronisation per optimizer step -- the same price ``torch.amp.GradScaler`` pays for the
same decision. The reduction itself (:func:`bad_grads`: NaN/Inf entries, or a 2-norm that
overflows float32 although every entry is finite) is fused and sync-free.

Interplay:
    * ``torch.optim.lr_scheduler``: works whether the scheduler is created before or after
      the guard. A skipped step does not stop the scheduler from advancing (as with
      GradScaler).
    * ``torch.amp.GradScaler``: the scaler already skips overflowing steps; the guard then
      sees unscaled, finite gradients and stays out of the way.
    * DDP: gradients are identical on every rank after the all-reduce, so every rank takes
      the same decision. Sharded optimizers (FSDP, ZeRO) see only their shard: there the
      ranks could disagree, and the guard is not the right tool.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .._checks import check_int
from ..errors import NonFiniteError, ParameterError
from ..stats.tensors import is_dtensor

__all__ = ["nonfinite_grads", "bad_grads", "OVERFLOW_NORM", "StepGuard", "skip_nonfinite", "run_closure_first",
           "closure_runs_first"]


def _grad_values(g: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: dense as is, sparse (COO/CSR/...) its value array, a
    DTensor (FSDP2) this rank's shard."""
    if is_dtensor(g):
        g = g.to_local()
    if g.layout == torch.strided:
        return g
    if g.layout == torch.sparse_coo:
        # _values() works on uncoalesced tensors and costs nothing; duplicates are checked
        # one by one, which is what we want (a NaN in any of them is a NaN in the sum).
        return g._values()
    return g.values()


def nonfinite_grads(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Whether any gradient of ``params`` holds a NaN or an Inf, as a 0-dim bool tensor.

    Fused and sync-free: gradients are grouped by (device, dtype) and reduced with one
    ``torch._foreach_norm(..., ord=inf)`` per group. The infinity norm (max ``|g|``) cannot
    overflow, so a large but finite fp16/bf16 gradient is never mistaken for an Inf, while
    a NaN or Inf anywhere propagates into the norm. The result stays on the device of the
    first gradient; nothing is read back to the host.

    Args:
        params: tensors (usually ``model.parameters()``); those without ``.grad`` and empty
            gradients are ignored. Sparse gradients are checked through their values.

    Returns:
        ``torch.tensor(True)`` if any gradient is non-finite, else ``torch.tensor(False)``
        (on the CPU when no parameter has a gradient).
    """
    return _any_nonfinite(_grouped(params)[0], math.inf)


def _grouped(params: Iterable[torch.Tensor]) -> tuple[dict, dict[int, Any]]:
    """The non-empty gradient values of ``params`` by (device, dtype), and the device meshes of
    the DTensor gradients among them (their values are this rank's shard)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    meshes: dict[int, Any] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        if is_dtensor(g):
            meshes.setdefault(id(g.device_mesh), g.device_mesh)
        v = _grad_values(g)
        if v.numel() == 0:  # _foreach_norm(inf) has no identity for an empty tensor
            continue
        groups.setdefault((v.device, v.dtype), []).append(v)
    return groups, meshes


def _any_nonfinite(groups: dict, ord: float) -> torch.Tensor:
    """Whether the ``ord``-norm of any tensor in ``groups`` is non-finite (0-dim bool, no sync):
    one fused norm per group; 2-norms of half-precision tensors accumulate in float32."""
    if not groups:
        return torch.zeros((), dtype=torch.bool)
    out_device = next(iter(groups))[0]
    flags = []
    for (device, dtype), tensors in groups.items():
        if ord == 2 and dtype in (torch.float16, torch.bfloat16):
            norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
        else:
            norms = torch._foreach_norm(tensors, ord)
        flag = torch.logical_not(torch.isfinite(torch.stack(norms)).all())
        flags.append(flag if device == out_device else flag.to(out_device, non_blocking=True))
    return flags[0] if len(flags) == 1 else torch.stack(flags).any()


#: Above this 2-norm the sum of squares overflows float32 (sqrt of its largest value, ~1.8e19):
#: ``clip_grad_norm_`` in float32 sees ``inf``, and Adam's ``exp_avg_sq`` becomes ``inf``.
OVERFLOW_NORM = math.sqrt(torch.finfo(torch.float32).max)


def bad_grads(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Whether a step's gradients are unsafe to apply, as a 0-dim bool tensor (no sync).

    True when any gradient holds a NaN or an Inf **or** when the float32 sum of squares of
    one overflows (finite entries whose 2-norm exceeds :data:`OVERFLOW_NORM`, ~1.8e19): such
    an update writes ``inf`` into the optimizer state and the run dies a few steps later.
    One fused ``torch._foreach_norm(..., 2)`` per (device, dtype) group, accumulated in
    float32 at least (so half-precision gradients do not overflow at 65504); NaN and Inf
    propagate into the norm, and the overflow is the norm itself becoming ``inf``. This is the
    :class:`StepGuard`'s check; :func:`nonfinite_grads` tests the entries only.
    """
    groups, meshes = _grouped(params)
    flag = _any_nonfinite(groups, 2)
    if meshes:
        # sharded gradients: every rank must take the same decision, or the ranks that skip
        # and those that step wait on different collectives. One all_reduce (MAX) of the flag.
        import torch.distributed as dist

        f = flag.to(torch.int32).reshape(1)
        for mesh in meshes.values():
            for d in range(mesh.ndim):
                dist.all_reduce(f, op=dist.ReduceOp.MAX, group=mesh.get_group(d))
        flag = f[0] > 0
    return flag


def _nonfinite_report(params: list[tuple[str, torch.Tensor]]) -> tuple[list[dict], list[dict]]:
    """Which gradients are non-finite (NaN/Inf counts), and which have finite entries but a
    norm that overflows float32 (their norm in float64) -- slow path, only on a skip."""
    bad, over = [], []
    for name, p in params:
        g = p.grad
        if g is None:
            continue
        v = _grad_values(g)
        if v.numel() == 0:
            continue
        n_nan = int(torch.isnan(v).sum())
        n_inf = int(torch.isinf(v).sum())
        if n_nan or n_inf:
            bad.append({"param": name, "shape": list(p.shape), "nan": n_nan, "inf": n_inf})
            continue
        norm = float(torch.linalg.vector_norm(v.detach(), dtype=torch.float64))
        if norm > OVERFLOW_NORM:
            over.append({"param": name, "shape": list(p.shape), "norm": norm})
    return bad, over


class StepGuard:
    """Optimizer wrapper: skip every step whose gradients are not all finite, or whose norm
    overflows float32 (:func:`bad_grads`).

    Use :func:`skip_nonfinite` to create one. The guard is attached on construction and
    detached by :meth:`remove` (or by leaving its ``with`` block).

    Args:
        optimizer: any ``torch.optim.Optimizer`` (or an object with ``step`` and
            ``param_groups``).
        max_consecutive_skips: how many steps in a row may be skipped; the next non-finite
            step raises :class:`~gradhealth.errors.NonFiniteError` instead (its ``diagnosis``
            is the info dict described below). ``None`` means no limit; ``0`` raises on the
            first non-finite step.
        on_skip: called as ``on_skip(info)`` on every skipped step and once more, with
            ``info["action"] == "raise"``, right before the error is raised. ``info`` holds
            ``step`` (0-based index of this ``optimizer.step()`` call since the guard was
            attached), ``action`` (``"skip"`` or ``"raise"``), ``n_consecutive`` (this one
            included), ``skipped_steps`` (total skipped so far, this one included when
            skipped), ``max_consecutive_skips``, ``loss`` (float, when ``step`` got a
            closure), ``nonfinite`` (a list of ``{"param", "shape", "nan", "inf"}``, one per
            parameter whose gradient is non-finite; ``param`` is the parameter's name when
            ``model`` was given, else ``"group{g}.param{i}"``) and ``overflow`` (a list of
            ``{"param", "shape", "norm"}``: finite entries whose float32 norm overflows, the
            norm computed in float64).
        model: optional module whose ``named_parameters()`` name the parameters in ``info``.
        on_error: called with the exception if the guard's own check ever raises (the step
            then goes through unchecked); default: one ``RuntimeWarning``.
        also_check: optional callable returning more parameters whose gradients are checked
            with the optimizer's own (the watcher passes those of the other optimizers of one
            training step: parameters split over two optimizers, one bad gradient skips both).

    Attributes:
        steps: calls to ``optimizer.step()`` seen by the guard.
        skipped_steps: how many of them were skipped.
        consecutive_skips: length of the current run of skipped steps (0 after a good step).
    """

    def __init__(self, optimizer: Any, max_consecutive_skips: int | None = 10,
                 on_skip: Callable[[dict], Any] | None = None, *, model: torch.nn.Module | None = None,
                 on_error: Callable[[BaseException], Any] | None = None,
                 also_check: Callable[[], Any] | None = None):
        owner = "StepGuard"
        if not (hasattr(optimizer, "step") and hasattr(optimizer, "param_groups")):
            raise ParameterError("optimizer", owner, "a torch.optim.Optimizer (with step and param_groups)",
                                 type(optimizer).__name__,
                                 "pass the optimizer itself, e.g. skip_nonfinite(torch.optim.AdamW(...)).")
        if max_consecutive_skips is not None:
            max_consecutive_skips = check_int(max_consecutive_skips, "max_consecutive_skips", owner,
                                              min_value=0, fix="pass an integer >= 0 (or None for no limit).")
        if on_skip is not None and not callable(on_skip):
            raise ParameterError("on_skip", owner, "a callable taking one dict, or None",
                                 type(on_skip).__name__, "pass a function, e.g. on_skip=print.")
        self.optimizer = optimizer
        self.max_consecutive_skips = max_consecutive_skips
        self.on_skip = on_skip
        self.on_error = on_error
        self.also_check = also_check
        self.steps = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._names: dict[int, str] = {}
        if model is not None:
            self._names = {id(p): n for n, p in model.named_parameters()}
        self._active = False
        self._install()

    # -- attaching -------------------------------------------------------------------------
    def _install(self) -> None:
        opt = self.optimizer
        self._had_instance_step = "step" in vars(opt)
        self._previous_instance_step = vars(opt).get("step")
        inner = opt.step  # whatever is bound now: the class's step, or an earlier wrapper
        guard = self

        def guarded_step(_opt, *args, **kwargs):
            return guard._step(inner, args, kwargs)

        # A learning-rate scheduler created before the guard marked its own wrapper; keep
        # the mark visible so it does not warn that step() was overridden behind its back.
        if hasattr(inner, "_wrapped_by_lr_sched"):
            guarded_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        guarded_step._gradhealth_guard = self  # type: ignore[attr-defined]
        # A bound method (not a plain function) so that a scheduler created *after* the
        # guard can wrap it in turn (it reads step.__func__).
        self._method = types.MethodType(guarded_step, opt)
        opt.step = self._method
        self._active = True

    def remove(self) -> None:
        """Detach the guard; ``optimizer.step`` behaves as before it was attached.

        If something wrapped ``optimizer.step`` after the guard (e.g. a learning-rate
        scheduler), the guard cannot be unwrapped from under it and becomes a pass-through.
        """
        if not self._active:
            return
        self._active = False
        opt = self.optimizer
        if vars(opt).get("step") is self._method:
            if self._had_instance_step:
                opt.step = self._previous_instance_step
            else:
                del opt.step

    @property
    def active(self) -> bool:
        """Whether the guard still checks steps (False after :meth:`remove`)."""
        return self._active

    def __enter__(self) -> StepGuard:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"StepGuard({type(self.optimizer).__name__}, max_consecutive_skips="
                f"{self.max_consecutive_skips}, steps={self.steps}, skipped_steps={self.skipped_steps}, "
                f"active={self._active})")

    # -- the guarded step ------------------------------------------------------------------
    def _params(self) -> list[tuple[str, torch.Tensor]]:
        out = []
        for gi, group in enumerate(self.optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                out.append((self._names.get(id(p), f"group{gi}.param{pi}"), p))
        if self.also_check is not None:
            mine = {id(p) for _, p in out}
            for k, p in enumerate(self.also_check()):
                if id(p) not in mine:
                    out.append((self._names.get(id(p), f"also.param{k}"), p))
        return out

    def _failed(self, exc: BaseException) -> None:
        """The check itself raised (a gradient of an exotic tensor type, a device error): let
        the step through, and say so once per guard."""
        if getattr(self, "_error_said", False):
            return
        self._error_said = True
        if self.on_error is not None:
            try:
                self.on_error(exc)
                return
            except Exception:
                pass
        import warnings

        warnings.warn(f"gradhealth StepGuard: the finiteness check failed ({type(exc).__name__}: {exc}); "
                      "steps go through unchecked.", RuntimeWarning, stacklevel=4)

    def _step(self, inner: Callable, args: tuple, kwargs: dict):
        if not self._active:
            return inner(*args, **kwargs)
        loss = closure = None
        if closure_runs_first(self.optimizer):   # (a SAM-like step calls its closure itself, later)
            loss, closure, args, kwargs = run_closure_first(args, kwargs)
        index = self.steps
        self.steps += 1
        if "grad_scaler" in kwargs or getattr(self.optimizer, "found_inf", None) is not None:
            # GradScaler hands optimizers that support AMP scaling (fused Adam/AdamW/SGD) the
            # still-scaled gradients and sets optimizer.found_inf (older torch: a grad_scaler
            # kwarg); the optimizer then skips the update itself. An overflow there is the
            # scaler's normal back-off, not a NaN.
            self.consecutive_skips = 0
            return inner(*args, **kwargs)
        try:
            params = self._params()
            # The one host sync per step (see the module docstring).
            bad = bool(bad_grads(p for _, p in params))
            report = _nonfinite_report(params) if bad else ([], [])
        except Exception as exc:  # the guard's own failure must not stop training
            self._failed(exc)
            bad = False
        if not bad:
            self.consecutive_skips = 0
            out = inner(*args, **kwargs)
            return loss if (out is None and closure is not None) else out
        n = self.consecutive_skips + 1
        limit = self.max_consecutive_skips
        action = "raise" if (limit is not None and n > limit) else "skip"
        info = {"step": index, "action": action, "n_consecutive": n,
                "skipped_steps": self.skipped_steps + (action == "skip"),
                "max_consecutive_skips": limit, "nonfinite": report[0], "overflow": report[1]}
        if loss is not None:
            try:
                info["loss"] = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            except (TypeError, ValueError, RuntimeError):
                pass
        if action == "skip":
            self.consecutive_skips = n
            self.skipped_steps += 1
        if self.on_skip is not None:
            self.on_skip(info)
        if action == "raise":
            culprits = info["nonfinite"] + info["overflow"]
            where = ", ".join(d["param"] for d in culprits[:5])
            more = len(culprits) - 5
            where += f" (+{more} more)" if more > 0 else ""
            raise NonFiniteError(
                f"{n} optimizer steps in a row (steps {index - n + 1}..{index}) had non-finite "
                f"gradients (NaN/Inf, or a norm that overflows float32) in {where or 'the parameters'}; "
                "the guard skipped "
                f"{n - 1} of them and stops because max_consecutive_skips={limit}. "
                "Skipping more will not help: lower the learning rate, clip gradients "
                "(gradhealth.remedies.clip_grad_norm_), or find the first non-finite layer with "
                "gradhealth.watch(...).", diagnosis=info)
        return loss


def closure_runs_first(optimizer: Any) -> bool:
    """Whether ``optimizer.step(closure)`` evaluates the closure first, once, before it updates
    anything: true of ``torch.optim``'s own ``step`` methods (SGD, Adam, AdamW, ..., LBFGS's
    first evaluation), so running the closure before the step changes nothing. A ``step`` written
    elsewhere (SAM perturbs the weights before it calls the closure; a subclass may take other
    arguments) is left alone."""
    step = getattr(type(optimizer), "step", None)
    return str(getattr(step, "__module__", "")).startswith("torch.optim.")


def run_closure_first(args: tuple, kwargs: dict, at: int = 0) -> tuple[Any, Any, tuple, dict]:
    """Run the closure of an ``optimizer.step(closure)`` call now, before the step, so that the
    gradients it computes can be checked; ``(loss, closure, args, kwargs)`` with the closure
    replaced by one that returns this loss on its first call (and re-evaluates on later calls,
    which LBFGS makes), so the closure is not run twice. ``(None, None, args, kwargs)`` when the
    call has no closure, or when its closure already ran this way (a guard, then the watcher's
    step hook): the first caller does the work. ``at``: the closure's position in ``args`` (1 in
    a step pre-hook, whose ``args`` start with the optimizer)."""
    closure = kwargs.get("closure", args[at] if len(args) > at else None)
    if not callable(closure) or getattr(closure, "_gradhealth_ran", False):
        return None, None, args, kwargs
    with torch.enable_grad():
        loss = closure()
    pending = [True]

    def cached_closure():
        if pending[0]:
            pending[0] = False
            return loss
        return closure()

    cached_closure._gradhealth_ran = True   # type: ignore[attr-defined]
    if "closure" in kwargs:
        kwargs = {**kwargs, "closure": cached_closure}
    else:
        args = (*args[:at], cached_closure, *args[at + 1:])
    return loss, closure, args, kwargs


def skip_nonfinite(optimizer: Any, max_consecutive_skips: int | None = 10,
                   on_skip: Callable[[dict], Any] | None = None, *,
                   model: torch.nn.Module | None = None) -> StepGuard:
    """Make ``optimizer.step()`` skip every step whose gradients hold a NaN or an Inf.

    Like optax's ``apply_if_finite``: a skipped step leaves the parameters and the optimizer
    state bitwise unchanged; after ``max_consecutive_skips`` skips in a row the next
    non-finite step raises :class:`~gradhealth.errors.NonFiniteError`. Costs one host sync
    per step (as ``torch.amp.GradScaler`` does). See :class:`StepGuard` for the arguments.

    Example::

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        guard = gradhealth.remedies.skip_nonfinite(opt, max_consecutive_skips=10)
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()                      # skipped if any gradient is NaN/Inf
        print(guard.skipped_steps)
        guard.remove()                      # or: with skip_nonfinite(opt): ...
    """
    return StepGuard(optimizer, max_consecutive_skips, on_skip, model=model)
