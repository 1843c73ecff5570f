"""Wrapping ``optimizer.step`` for the callbacks (internal): run a closure before the step's
hooks, turn the guard's ``NonFiniteError`` into a stop."""

from __future__ import annotations

import types

from ..errors import NonFiniteError

__all__ = ["wrap_step", "closure_first", "stopping"]


def wrap_step(opt, make):
    """Put ``make(inner)`` in place of ``opt.step`` (a bound method); returns an undo function."""
    had = "step" in vars(opt)
    previous = vars(opt).get("step")
    inner = opt.step
    fn = make(inner)
    if hasattr(inner, "_wrapped_by_lr_sched"):   # keep the LR scheduler's mark visible
        fn._wrapped_by_lr_sched = True
    method = types.MethodType(fn, opt)
    opt.step = method

    def undo():
        if vars(opt).get("step") is method:
            if had:
                opt.step = previous
            else:
                del opt.step
        else:   # something wrapped it after us: become a pass-through
            method.__func__._gradhealth_passthrough = True

    return undo


def closure_first(inner):
    """A replacement for ``optimizer.step`` that runs the closure before the step (and its hooks)."""
    def step(_opt, *args, **kwargs):
        if getattr(step, "_gradhealth_passthrough", False):
            return inner(*args, **kwargs)
        if "closure" in kwargs:
            closure = kwargs.pop("closure")
        elif args:
            closure, args = args[0], args[1:]
        else:
            closure = None
        if closure is None:
            return inner(*args, **kwargs)
        import torch

        with torch.enable_grad():
            loss = closure()
        out = inner(*args, **kwargs)
        return loss if out is None else out

    return step


def stopping(inner, on_stop):
    """A replacement for ``optimizer.step`` that catches the guard's ``NonFiniteError``: the step is
    left undone, ``on_stop(exc)`` is called once, and later steps pass through."""
    said = []

    def step(_opt, *args, **kwargs):
        if getattr(step, "_gradhealth_passthrough", False) or said:
            return inner(*args, **kwargs)
        try:
            return inner(*args, **kwargs)
        except NonFiniteError as exc:
            said.append(exc)
            on_stop(exc)
            return None

    return step
