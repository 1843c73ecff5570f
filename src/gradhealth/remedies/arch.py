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

from .. import _vocab
from ..errors import ParameterError
from ._plan import _ACT_MODULES, _Act, _act_of_module, _parse_act

__all__ = ["replace_activation_"]


def _build(act: _Act) -> nn.Module:
    """A new module for ``act`` (a name of :func:`gradhealth._vocab.builder_classes`), with the
    default arguments of its class; leaky_relu takes its slope (0.01 when none is given)."""
    cls = _vocab.builder_classes()[act.name]
    if act.name == "leaky_relu":
        return cls(act.alpha if act.alpha is not None else 0.01)
    return cls()


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
    builders = _vocab.builder_classes()
    if a_new.name not in builders:
        raise ParameterError("new", owner, "one of " + ", ".join(sorted(builders)), new,
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
        repl = _build(a_new)
        setattr(parent, attr, repl)
        out[name] = f"{type(mod).__name__} -> {type(repl).__name__}"
    return out
