"""Architecture remedies that can be applied to an existing model in one call.

The first textbook remedy for vanishing gradients is a ReLU-family activation: sigmoid's
derivative is at most 1/4, so each sigmoid layer multiplies the backward signal by at most
``|W| / 4``, while an active ReLU passes it unchanged. :func:`replace_activation_` swaps
the activation *modules* of a model in place (follow it with :func:`gradhealth.remedies.he_`
so the weights match the new activation). Adding residual connections or normalisation
changes ``forward`` and stays a code change.
"""

from __future__ import annotations

from torch import nn

from ..errors import ParameterError
from ._plan import _ACT_MODULES, _act_of_module, _parse_act

__all__ = ["replace_activation_"]

_FACTORIES = {
    "relu": lambda a: nn.ReLU(), "leaky_relu": lambda a: nn.LeakyReLU(a if a is not None else 0.01),
    "elu": lambda a: nn.ELU(), "selu": lambda a: nn.SELU(), "gelu": lambda a: nn.GELU(),
    "swish": lambda a: nn.SiLU(), "tanh": lambda a: nn.Tanh(), "sigmoid": lambda a: nn.Sigmoid(),
    "hard_tanh": lambda a: nn.Hardtanh(), "softplus": lambda a: nn.Softplus(),
}


def replace_activation_(model: nn.Module, old: str, new: str) -> dict[str, str]:
    """Replace every activation module of kind ``old`` by a new module of kind ``new``, in place.

    Args:
        model: the model.
        old: activation to remove, e.g. ``"sigmoid"`` (names as in
            :func:`gradhealth.theory.activation_names`).
        new: activation to put in its place, e.g. ``"relu"`` or ``"leaky_relu(0.01)"``.

    Returns:
        ``{module name: "Sigmoid -> ReLU"}`` for every replaced module.

    Raises:
        ParameterError: unknown names, or no ``old`` activation *module* in the model (an
            activation applied as a function in ``forward`` cannot be swapped from outside).

    Example::

        gradhealth.remedies.replace_activation_(model, "sigmoid", "relu")
        gradhealth.remedies.he_(model)
    """
    owner = "replace_activation_"
    if not isinstance(model, nn.Module):
        raise ParameterError("model", owner, "a torch.nn.Module", type(model).__name__, "pass the model itself.")
    a_old = _parse_act(old, "old", owner)
    a_new = _parse_act(new, "new", owner)
    if a_new.name not in _FACTORIES:
        raise ParameterError("new", owner, "one of " + ", ".join(sorted(_FACTORIES)), new,
                             "pass e.g. new='relu'.")
    # remove_duplicate=False: one activation instance reused at several places is replaced
    # at every place, not only the first
    hits = [(name, mod) for name, mod in model.named_modules(remove_duplicate=False)
            if name and (a := _act_of_module(mod)) is not None and a.name == a_old.name]
    if not hits:
        present = sorted({_ACT_MODULES[type(m)] for _, m in model.named_modules() if type(m) in _ACT_MODULES})
        raise ParameterError("old", owner, "an activation that appears as a module in the model", old,
                             "activation modules present: " + (", ".join(present) or "none") + ". An "
                             "activation applied as a function in forward() must be changed in the code.")
    out = {}
    for name, mod in hits:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        repl = _FACTORIES[a_new.name](a_new.alpha)
        setattr(parent, attr, repl)
        out[name] = f"{type(mod).__name__} -> {type(repl).__name__}"
    return out
