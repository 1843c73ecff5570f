"""The activation vocabulary: torch module / function / method -> activation, family, layer role.

One table, read by ``stats``, ``watch``, ``probe`` and ``remedies`` (before issue 8 each kept
its own copy, with two spellings). Importing this module does **not** import torch: the
names, families and spellings are plain data; the torch objects (classes, callables) are
resolved from their dotted paths on first use, so a torch-free floor can read the names.

Terms:

``name``
    the canonical activation name, in gradhealth's spelling (``"hard_tanh"``, ``"swish"``),
    the keys of :data:`ACTIVATIONS` and of :data:`gradhealth.stats.ACTIVATION_FAMILIES`.
``family``
    what the activation's output means for dead units and saturation (see
    :mod:`gradhealth.stats.activations`): ``"relu"``, ``"saturating"``, ``"smooth"`` or
    ``"linear"``.
``theory``
    the nearest activation of :mod:`gradhealth.theory.activations`, which the initialisers'
    planner assigns (``relu6 -> "relu"``, ``prelu -> "leaky_relu"``); ``None`` where the theory
    has no counterpart (the planner then does not recognise the activation at all).
``watch_name``
    the spelling of the watcher's layer table (``LayerTable.activations``), kept because runs
    and events already show it: torch style for the two "hard" ones (``"hardtanh"``,
    ``"hardsigmoid"``), the canonical name otherwise.

Which consumer recognises what (kept exactly as before the merge, see
``tests/characterization/test_vocab_tables.py``):

* activation **modules** (:data:`MODULES`): the watcher reads all of them; the planner and
  ``replace_activation_`` only those with a ``theory`` name. ``Hardswish``, ``RReLU``,
  ``Tanhshrink``, ... are not activation modules here. (The probe sees a module through the
  function its ``forward`` calls, so ``nn.Hardswish`` is ``hard_swish`` there.)
* activation **functions** (:data:`FUNCTIONS`): the probe's spy reads all of them; the
  planner (``torch.fx`` call_function targets) only those marked ``planner=True``.
* tensor **methods** (:data:`METHODS`): both read all of them (the probe as the method
  objects of ``torch.Tensor`` / ``torch._C.TensorBase``, the planner as fx method names).

Lookups::

    canonical_name("Hard-Tanh")        -> "hard_tanh"     (any spelling; None if unknown)
    activation("hardtanh")             -> Activation(name="hard_tanh", family="saturating", ...)
    module_activation(nn.Hardtanh())   -> Activation(... "hard_tanh" ...)   (None: not one)
    function_activations()             -> {F.hardtanh: "hard_tanh", torch.tanh: "tanh", ...}
    builder_classes()["swish"]         -> nn.SiLU         (what replace_activation_ builds)
    layer_role(module, direct_params)  -> "weight" | "recurrent" | "norm" | "embedding" |
                                          "activation" | "other"
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Activation", "FunctionEntry", "ACTIVATIONS", "ALIASES", "FAMILIES", "FAMILY_BOUNDS", "MODULES",
    "FUNCTIONS", "METHODS", "ROLES", "canonical_name", "activation", "family_of", "module_classes",
    "module_activation", "function_activations", "method_activations", "planner_functions",
    "planner_methods", "builder_classes", "role_classes", "layer_role",
]

TANH_BOUNDS = (-1.0, 1.0)
SIGMOID_BOUNDS = (0.0, 1.0)

#: The families, and the bounds a bare family name implies (``"saturating"`` assumes tanh's).
FAMILIES = ("relu", "saturating", "smooth", "linear")
FAMILY_BOUNDS: dict[str, tuple[float, float] | None] = {
    "relu": None, "saturating": TANH_BOUNDS, "smooth": None, "linear": None}


@dataclass(frozen=True)
class Activation:
    """One activation of the vocabulary.

    Attributes:
        name: canonical gradhealth spelling (``"hard_tanh"``).
        family: ``"relu"``, ``"saturating"``, ``"smooth"`` or ``"linear"``.
        bounds: output bounds used for saturation (saturating family), else None.
        theory: nearest :mod:`gradhealth.theory` activation the planner assigns, or None.
        watch_name: spelling of the watcher's layer table (``"hardtanh"``).
    """

    name: str
    family: str
    bounds: tuple[float, float] | None = None
    theory: str | None = None
    watch_name: str = ""

    def __post_init__(self) -> None:
        if not self.watch_name:
            object.__setattr__(self, "watch_name", self.name)


def _a(name, family, bounds=None, theory=None, watch_name=""):
    return Activation(name, family, bounds, theory, watch_name)


#: Canonical name -> :class:`Activation`, in the order of ``stats.ACTIVATION_FAMILIES``.
ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    _a("relu", "relu", theory="relu"),
    _a("relu6", "relu", theory="relu"),
    _a("tanh", "saturating", TANH_BOUNDS, theory="tanh"),
    _a("hard_tanh", "saturating", TANH_BOUNDS, theory="hard_tanh", watch_name="hardtanh"),
    _a("softsign", "saturating", TANH_BOUNDS),
    _a("sigmoid", "saturating", SIGMOID_BOUNDS, theory="sigmoid"),
    _a("hard_sigmoid", "saturating", SIGMOID_BOUNDS, watch_name="hardsigmoid"),
    _a("leaky_relu", "smooth", theory="leaky_relu"),
    _a("prelu", "smooth", theory="leaky_relu"),
    _a("rrelu", "smooth"),
    _a("elu", "smooth", theory="elu"),
    _a("celu", "smooth"),
    _a("selu", "smooth", theory="selu"),
    _a("gelu", "smooth", theory="gelu"),
    _a("swish", "smooth", theory="swish"),
    _a("mish", "smooth"),
    _a("softplus", "smooth", theory="softplus"),
    _a("hard_swish", "smooth"),
    _a("linear", "linear", theory="linear"),
)}

#: Other spellings -> canonical name. Keys are lower case *without underscores* (see
#: :func:`canonical_name`), plus the few with one.
ALIASES: dict[str, str] = {"silu": "swish", "hardtanh": "hard_tanh", "hardsigmoid": "hard_sigmoid",
                           "hardswish": "hard_swish", "identity": "linear", "logistic": "sigmoid",
                           "leakyrelu": "leaky_relu"}

#: Activation modules: (class name in ``torch.nn``, canonical name), in matching order
#: (``ReLU6`` subclasses ``Hardtanh``, so it comes first; isinstance matches subclasses).
MODULES: tuple[tuple[str, str], ...] = (
    ("ReLU6", "relu6"), ("ReLU", "relu"), ("LeakyReLU", "leaky_relu"), ("PReLU", "prelu"),
    ("ELU", "elu"), ("SELU", "selu"), ("CELU", "celu"), ("GELU", "gelu"), ("SiLU", "swish"),
    ("Mish", "mish"), ("Softplus", "softplus"), ("Tanh", "tanh"), ("Sigmoid", "sigmoid"),
    ("Hardtanh", "hard_tanh"), ("Hardsigmoid", "hard_sigmoid"), ("Softsign", "softsign"),
)


@dataclass(frozen=True)
class FunctionEntry:
    """Functional activations at one dotted path.

    Attributes:
        paths: dotted paths of the callables (``"torch.nn.functional.hardtanh"``); a path
            missing from the installed torch is skipped.
        name: canonical activation name.
        planner: True where the initialisers' planner (``torch.fx``) reads the callable too.
    """

    paths: tuple[str, ...]
    name: str
    planner: bool = False


_F = "torch.nn.functional."

#: Functional activations, in registration order (a later entry for the same callable wins).
FUNCTIONS: tuple[FunctionEntry, ...] = (
    FunctionEntry(("torch.relu", "torch.relu_", _F + "relu", _F + "relu_"), "relu", planner=True),
    FunctionEntry((_F + "relu6",), "relu6", planner=True),
    FunctionEntry(("torch.tanh", _F + "tanh"), "tanh", planner=True),
    FunctionEntry(("torch.tanh_",), "tanh"),
    FunctionEntry(("torch.sigmoid", _F + "sigmoid"), "sigmoid", planner=True),
    FunctionEntry(("torch.sigmoid_", "torch.special.expit"), "sigmoid"),
    FunctionEntry((_F + "hardtanh",), "hard_tanh", planner=True),
    FunctionEntry((_F + "hardtanh_",), "hard_tanh"),
    FunctionEntry((_F + "softsign",), "softsign"),
    FunctionEntry((_F + "hardsigmoid",), "hard_sigmoid"),
    FunctionEntry((_F + "leaky_relu",), "leaky_relu", planner=True),
    FunctionEntry((_F + "leaky_relu_",), "leaky_relu"),
    FunctionEntry((_F + "elu",), "elu", planner=True),
    FunctionEntry((_F + "elu_",), "elu"),
    FunctionEntry((_F + "selu", "torch.selu"), "selu", planner=True),
    FunctionEntry(("torch.selu_",), "selu"),
    FunctionEntry((_F + "celu",), "celu"),
    FunctionEntry((_F + "gelu",), "gelu", planner=True),
    FunctionEntry((_F + "silu",), "swish", planner=True),
    FunctionEntry((_F + "mish",), "mish"),
    FunctionEntry((_F + "softplus",), "softplus", planner=True),
    FunctionEntry((_F + "hardswish",), "hard_swish"),
    FunctionEntry((_F + "prelu",), "prelu"),
)

#: Tensor methods that are activations: method name -> canonical name (both consumers).
METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                           "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}

#: Layer roles by class (dotted paths under ``torch.nn``), checked in this order; see
#: :func:`layer_role` for the rules that are not a class.
ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("recurrent", ("RNNBase", "RNNCellBase")),
    ("weight", ("Linear", "Bilinear", "modules.conv._ConvNd", "MultiheadAttention")),
    ("norm", ("modules.batchnorm._NormBase", "LayerNorm", "GroupNorm")),
    ("embedding", ("Embedding", "EmbeddingBag")),
)


# ------------------------------------------------------------------------------ names
def canonical_name(text: Any) -> str | None:
    """The canonical activation name of any spelling, or None when it is not an activation.

    Case, surrounding blanks, ``-`` versus ``_`` and torch's underscore-free spellings do not
    matter: ``"Hard-Tanh"``, ``"hardtanh"`` and ``"hard_tanh"`` all give ``"hard_tanh"``;
    ``"SiLU"`` gives ``"swish"``. Family names (``"saturating"``) are not activation names.
    """
    if text is None:
        return None
    key = str(text).strip().lower().replace("-", "_")
    key = ALIASES.get(key.replace("_", ""), ALIASES.get(key, key))
    return key if key in ACTIVATIONS else None


def activation(text: Any) -> Activation | None:
    """The :class:`Activation` of any spelling (see :func:`canonical_name`), or None."""
    name = canonical_name(text)
    return None if name is None else ACTIVATIONS[name]


def family_of(text: Any) -> tuple[str | None, tuple[float, float] | None]:
    """``(family, bounds)`` of an activation name (any spelling) or of a family name.

    A bare ``"saturating"`` assumes tanh's bounds (-1, 1). Unknown names and None give
    ``(None, None)``. This is :func:`gradhealth.stats.activation_family`.
    """
    if text is None:
        return None, None
    a = activation(text)
    if a is not None:
        return a.family, a.bounds
    key = str(text).strip().lower().replace("-", "_")
    key = ALIASES.get(key.replace("_", ""), ALIASES.get(key, key))
    if key in FAMILY_BOUNDS:
        return key, FAMILY_BOUNDS[key]
    return None, None


# ------------------------------------------------------------------------------ torch objects
def _resolve(path: str) -> Any:
    """The object at a dotted path (``"torch.nn.functional.relu"``, ``"torch.Tensor.relu"``),
    or None when the installed torch lacks it."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


@functools.cache
def module_classes() -> tuple[tuple[type, Activation], ...]:
    """``(torch.nn class, Activation)`` for every activation module, in matching order.

    Match with ``isinstance`` in this order (subclasses first), or look up ``type(m)`` exactly
    in ``dict(module_classes())``. Imports torch.
    """
    nn = importlib.import_module("torch.nn")
    return tuple((getattr(nn, cls), ACTIVATIONS[name]) for cls, name in MODULES if hasattr(nn, cls))


def module_activation(module: Any, *, planner: bool = False) -> Activation | None:
    """The :class:`Activation` of an activation module (``nn.Tanh()`` or a subclass), or None.

    Args:
        module: any ``nn.Module``.
        planner: only the modules the initialisers' planner reads (those with a ``theory``
            name); the watcher and the probe read every module of :data:`MODULES`.
    """
    for cls, act in module_classes():
        if isinstance(module, cls):
            return act if (not planner or act.theory is not None) else None
    return None


@functools.cache
def function_activations(planner: bool = False) -> dict[Any, str]:
    """``{callable: canonical name}`` of the functional activations.

    Args:
        planner: False (the probe's spy): every entry of :data:`FUNCTIONS` plus the method
            objects of :data:`METHODS` on ``torch.Tensor`` and ``torch._C.TensorBase``.
            True: only the ``torch.fx`` call_function targets the initialisers' planner reads
            (names stay canonical; :func:`planner_functions` maps them to theory names).

    Callables missing from the installed torch are left out. Imports torch. The dict is
    cached: do not modify it.
    """
    out: dict[Any, str] = {}
    for entry in FUNCTIONS:
        if planner and not entry.planner:
            continue
        for path in entry.paths:
            fn = _resolve(path)
            if fn is not None:
                out[fn] = entry.name
    if not planner:
        for meth, name in METHODS.items():
            for owner in ("torch.Tensor", "torch._C.TensorBase"):
                fn = _resolve(f"{owner}.{meth}")
                if fn is not None:
                    out[fn] = name
    return out


def method_activations() -> dict[str, str]:
    """``{tensor method name: canonical name}``: what ``x.relu()`` / ``x.tanh_()`` are."""
    return dict(METHODS)


def planner_functions() -> dict[Any, str]:
    """``{callable: theory name}`` the initialisers' planner reads in a ``torch.fx`` graph."""
    return {fn: ACTIVATIONS[n].theory or n for fn, n in function_activations(True).items()}


def planner_methods() -> dict[str, str]:
    """``{tensor method name: theory name}`` the planner reads as fx ``call_method`` targets."""
    return {m: ACTIVATIONS[n].theory or n for m, n in METHODS.items()}


@functools.cache
def builder_classes() -> dict[str, type]:
    """``{theory name: torch.nn class}`` that builds each activation ``replace_activation_``
    can put in: the modules whose canonical name is its own theory name (``"swish"`` ->
    ``nn.SiLU``, ``"hard_tanh"`` -> ``nn.Hardtanh``; not ``relu6`` or ``prelu``). Imports torch.
    """
    return {act.name: cls for cls, act in module_classes() if act.theory == act.name}


# ------------------------------------------------------------------------------ layer roles
@functools.cache
def role_classes() -> tuple[tuple[str, tuple[type, ...]], ...]:
    """``(role, torch classes)`` in checking order, resolved from :data:`ROLES`. Imports torch."""
    return tuple((role, tuple(c for c in (_resolve("torch.nn." + p) for p in paths) if c is not None))
                 for role, paths in ROLES)


def layer_role(module: Any, direct_params: list) -> str:
    """The role of a layer in the watcher's layer table.

    In order: ``"recurrent"`` (RNN/LSTM/GRU and cells), ``"weight"`` (Linear, Bilinear, Conv*,
    MultiheadAttention), ``"norm"`` (BatchNorm/InstanceNorm, LayerNorm, GroupNorm, or any
    class whose name ends in ``Norm``, e.g. RMSNorm), ``"embedding"``, ``"activation"`` (a
    module of :data:`MODULES`), ``"weight"`` again for a custom module owning a parameter of
    2 or more dims (a hand-written Linear), else ``"other"``.

    Args:
        module: the module.
        direct_params: the parameters it owns directly (``module.parameters(recurse=False)``).
    """
    for role, classes in role_classes():
        if isinstance(module, classes):
            return role
        if role == "norm" and type(module).__name__.endswith("Norm"):
            return "norm"
    if module_activation(module) is not None:
        return "activation"
    if any(p.dim() >= 2 for p in direct_params):
        return "weight"
    return "other"
