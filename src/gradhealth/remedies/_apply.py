"""Applying a prescription that changes the model, without ``eval``.

A prescription's ``code`` made only of ``gradhealth.remedies.f(...)`` calls to
:data:`MODEL_REMEDIES` with literal arguments is parsed (:mod:`ast`) and run against the
user's ``model`` and ``inputs``; anything else (clipping, guards, learning rates, code
changes) is refused with the reason.
"""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError
from ..events import Prescription

__all__ = ["apply_prescription", "applies_to_model", "MODEL_REMEDIES"]


#: Remedies that change the model itself, once (the others act during training: clipping,
#: guards, learning-rate changes, or are code changes to forward()).
MODEL_REMEDIES = ("he_", "xavier_", "lecun_", "orthogonal_", "critical_", "gaussian_", "lsuv_",
                  "zero_init_residual_", "replace_activation_", "forget_gate_bias_")


def _parse_model_calls(code: str) -> list[tuple[str, list, dict]] | None:
    """``[(function, args, kwargs), ...]`` for code made only of ``gradhealth.remedies.f(...)``
    calls to :data:`MODEL_REMEDIES` with literal arguments and the names ``model`` /
    ``inputs``; ``None`` for anything else."""
    import ast

    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError:
        return None
    if not tree.body:
        return None
    out = []

    def arg(node):
        if isinstance(node, ast.Name) and node.id in ("model", "inputs"):
            return ("__name__", node.id)
        return ast.literal_eval(node)  # ValueError for anything that is not a literal

    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
            return None
        call = stmt.value
        f = call.func
        if not (isinstance(f, ast.Attribute) and f.attr in MODEL_REMEDIES
                and isinstance(f.value, ast.Attribute) and f.value.attr == "remedies"
                and isinstance(f.value.value, ast.Name) and f.value.value.id == "gradhealth"):
            return None
        try:
            args = [arg(a) for a in call.args]
            kwargs = {k.arg: arg(k.value) for k in call.keywords if k.arg is not None}
        except ValueError:
            return None
        out.append((f.attr, args, kwargs))
    return out


def applies_to_model(prescription: Prescription | str) -> bool:
    """Whether :func:`apply_prescription` can apply it (a one-off change to the model)."""
    code = prescription.code if isinstance(prescription, Prescription) else str(prescription)
    return _parse_model_calls(code) is not None


def apply_prescription(prescription: Prescription | str, model: Any, inputs: Any = None) -> list:
    """Apply a prescription that changes the model (re-initialisation, activation swap), in place.

    Only calls of :data:`MODEL_REMEDIES` with literal arguments are run (the code is parsed,
    never ``eval``-ed); ``model`` and ``inputs`` in the code stand for the arguments.

    Returns:
        What each call returned (e.g. :class:`~gradhealth.remedies.InitSummary`).

    Raises:
        ParameterError: the prescription is a training-time remedy (clipping, guard, learning
            rate) or a code change, or it needs ``inputs`` and none were given.
    """
    code = prescription.code if isinstance(prescription, Prescription) else str(prescription)
    calls = _parse_model_calls(code)
    if calls is None:
        raise ParameterError("prescription", "apply_prescription",
                             "a model change made of gradhealth.remedies calls (" + ", ".join(MODEL_REMEDIES) + ")",
                             code, "training-time remedies (clipping, skip_nonfinite, learning rate) go "
                             "into the training loop, and architecture changes into the model's code.")
    from .arch import replace_activation_
    from .init import critical_, gaussian_, he_, lecun_, lsuv_, orthogonal_, xavier_, zero_init_residual_
    from .recurrent import forget_gate_bias_

    table = {"he_": he_, "xavier_": xavier_, "lecun_": lecun_, "orthogonal_": orthogonal_,
             "critical_": critical_, "gaussian_": gaussian_, "lsuv_": lsuv_,
             "zero_init_residual_": zero_init_residual_, "replace_activation_": replace_activation_,
             "forget_gate_bias_": forget_gate_bias_}

    def value(v):
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "__name__":
            if v[1] == "model":
                return model
            if inputs is None:
                raise ParameterError("inputs", "apply_prescription", "a batch for this prescription",
                                     None, f"{code} measures on data: pass inputs=<one batch>.")
            return inputs
        return v

    return [table[name](*[value(a) for a in args], **{k: value(v) for k, v in kwargs.items()})
            for name, args, kwargs in calls]
