"""Characterization: the activation vocabulary as each consumer read it before ``_vocab`` (issue 8).

Before the redesign the mapping "torch module / function / method -> activation name, family,
layer role" lived in five tables with two spellings (``"hardtanh"`` in the watcher,
``"hard_tanh"`` elsewhere). The oracle is what each *consumer* did with them, observed through
its own functions (not its private tables, which the redesign replaces), written to
``golden_vocab.json`` by this test with ``GRADHEALTH_UPDATE_GOLDEN=1``. Regenerate only for an
intended behaviour change, and say so in the commit.

Sections:
    watch_modules     ``watch.hooks.activation_info(module)`` for every torch activation class
    watch_layers      ``watch.hooks.discover_layers`` on one model holding every kind of layer:
                      (name, type, role, family, activation, n_params) per layer
    watch_act_stats   ``watch.hooks.act_stats`` of each activation's own output on a fixed input
                      (the family lookup behind the watcher's spelling)
    stats_family      ``stats.activation_family`` for every spelling any consumer uses
    stats_table       ``stats.ACTIVATION_FAMILIES``
    probe_functional  the activation ``gradhealth.probe`` reports after a layer, for a function,
                      a tensor method or a module applied to the layer's output
    planner           the activation ``he_`` assigns to a layer followed by each module /
                      function / method (and the source it names)
    builders          what ``replace_activation_`` builds for each name, and the names it lists
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

GOLDEN = Path(__file__).with_name("golden_vocab.json")

# Every public class of torch.nn.modules.activation (Threshold and MultiheadAttention need
# arguments), plus a user subclass (isinstance matching) and a few non-activations.
_ACT_CLASSES = ("ReLU", "RReLU", "Hardtanh", "ReLU6", "Sigmoid", "Hardsigmoid", "Tanh", "SiLU", "Mish",
                "Hardswish", "ELU", "CELU", "SELU", "GLU", "GELU", "Hardshrink", "LeakyReLU",
                "LogSigmoid", "Softplus", "Softshrink", "PReLU", "Softsign", "Tanhshrink", "Softmin",
                "Softmax", "Softmax2d", "LogSoftmax", "Identity", "Dropout")

# Every spelling of an activation any table used, in both styles, plus family names and misses.
_SPELLINGS = ("relu", "relu6", "ReLU", "leaky_relu", "leakyrelu", "LeakyReLU", "Leaky-ReLU", "prelu",
              "rrelu", "elu", "celu", "selu", "gelu", "GELU", "swish", "silu", "SiLU", "mish",
              "softplus", "tanh", "Tanh", "sigmoid", "logistic", "hardtanh", "hard_tanh", "Hard-Tanh",
              "hardsigmoid", "hard_sigmoid", "hardswish", "hard_swish", "softsign", "linear",
              "identity", "erf", "relu_6", " tanh ", "saturating", "smooth", "nope", "", None)


class _MyTanh(nn.Tanh):
    pass


def _module(cls: str) -> nn.Module:
    return _MyTanh() if cls == "_MyTanh" else getattr(nn, cls)()


def _classes() -> list[str]:
    return [c for c in _ACT_CLASSES if hasattr(nn, c)] + ["_MyTanh"]


def _r(x):
    """JSON-stable value: floats to 6 significant digits, NaN/inf spelled out, addresses blanked."""
    if isinstance(x, str):
        return re.sub(r"0x[0-9a-fA-F]+", "0x?", x)
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {str(k): _r(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v) for v in x]
    return _r(str(x))


# --- watch --------------------------------------------------------------------------------
def _watch_modules() -> dict:
    from gradhealth.watch.hooks import activation_info

    return {cls: activation_info(_module(cls)) for cls in _classes()}


class _OwnMatrix(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 3))


class _OwnVector(nn.Module):
    def __init__(self):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(3))


class MyNorm(nn.Module):  # role by class name: ends with "Norm"
    def __init__(self):
        super().__init__()
        self.g = nn.Parameter(torch.ones(3))


def _layer_zoo() -> nn.ModuleDict:
    mods = {
        "linear": nn.Linear(3, 3), "bilinear": nn.Bilinear(3, 3, 3), "conv1": nn.Conv1d(3, 3, 1),
        "conv2": nn.Conv2d(3, 3, 1), "conv3": nn.Conv3d(3, 3, 1), "convT": nn.ConvTranspose2d(3, 3, 1),
        "mha": nn.MultiheadAttention(4, 2), "rnn": nn.RNN(3, 3), "lstm": nn.LSTM(3, 3), "gru": nn.GRU(3, 3),
        "rnncell": nn.RNNCell(3, 3), "lstmcell": nn.LSTMCell(3, 3), "grucell": nn.GRUCell(3, 3),
        "bn1": nn.BatchNorm1d(3), "bn2": nn.BatchNorm2d(3), "inorm": nn.InstanceNorm1d(3, affine=True),
        "ln": nn.LayerNorm(3), "gn": nn.GroupNorm(1, 3), "lrn": nn.LocalResponseNorm(2),
        "emb": nn.Embedding(4, 3), "embbag": nn.EmbeddingBag(4, 3), "own_matrix": _OwnMatrix(),
        "own_vector": _OwnVector(), "my_norm": MyNorm(), "threshold": nn.Threshold(0.1, 0.0),
    }
    if hasattr(nn, "RMSNorm"):
        mods["rms"] = nn.RMSNorm(3)
    for cls in _classes():
        mods[f"act_{cls}"] = _module(cls)
    return nn.ModuleDict(mods)


def _watch_layers() -> dict:
    from gradhealth.watch.hooks import discover_layers

    t = discover_layers(_layer_zoo()).table
    return {t.names[i]: [t.types[i], t.roles[i], t.families[i], t.activations[i], t.n_params[i]]
            for i in range(len(t))}


def _fixed_input() -> torch.Tensor:
    # 4 examples x 16 units; units 0..3 are negative on every example (dead after a ReLU)
    x = torch.linspace(-8.0, 8.0, 64).reshape(16, 4).T.contiguous()
    return x


def _watch_act_stats() -> dict:
    from gradhealth.watch.hooks import act_stats, activation_info

    out = {}
    x = _fixed_input()
    cases = [(cls, _module(cls)) for cls in _classes()] + [("Hardtanh(-2,2)", nn.Hardtanh(-2.0, 2.0)),
                                                             ("Hardtanh(0,6)", nn.Hardtanh(0.0, 6.0))]
    for label, mod in cases:
        info = activation_info(mod)
        if info is None:
            continue
        with torch.no_grad():
            y = mod(x)
        out[label] = act_stats(y, mod, info[1], info[0], False).tolist()
    return out


# --- stats --------------------------------------------------------------------------------
def _stats_family() -> dict:
    from gradhealth.stats import activation_family

    return {repr(s): list(activation_family(s)) for s in _SPELLINGS}


def _stats_table() -> dict:
    from gradhealth.stats import ACTIVATION_FAMILIES

    return {k: list(v) for k, v in ACTIVATION_FAMILIES.items()} | {"__order__": list(ACTIVATION_FAMILIES)}


# --- probe --------------------------------------------------------------------------------
class _Fn(nn.Module):
    def __init__(self, fn, *args):
        super().__init__()
        self.a, self.b, self.fn, self.args = nn.Linear(4, 4), nn.Linear(4, 2), fn, args

    def forward(self, x):
        return self.b(self.fn(self.a(x), *self.args))


class _Method(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.a, self.b, self.method = nn.Linear(4, 4), nn.Linear(4, 2), method

    def forward(self, x):
        return self.b(getattr(self.a(x), self.method)())


def _functions() -> dict:
    """Candidate functions: the union of every table, their in-place twins, and misses."""
    fns = {"F.relu": F.relu, "F.relu_": F.relu_, "torch.relu": torch.relu, "torch.relu_": torch.relu_,
           "F.relu6": F.relu6, "torch.tanh": torch.tanh, "torch.tanh_": torch.tanh_, "F.tanh": F.tanh,
           "torch.sigmoid": torch.sigmoid, "torch.sigmoid_": torch.sigmoid_, "F.sigmoid": F.sigmoid,
           "torch.special.expit": torch.special.expit, "F.hardtanh": F.hardtanh,
           "F.hardtanh_": F.hardtanh_, "F.softsign": F.softsign, "F.hardsigmoid": F.hardsigmoid,
           "F.leaky_relu": F.leaky_relu, "F.leaky_relu_": F.leaky_relu_, "F.elu": F.elu, "F.elu_": F.elu_,
           "F.selu": F.selu, "torch.selu": torch.selu, "torch.selu_": torch.selu_, "F.celu": F.celu,
           "F.gelu": F.gelu, "F.silu": F.silu, "F.mish": F.mish, "F.softplus": F.softplus,
           "F.hardswish": F.hardswish, "F.rrelu": F.rrelu, "F.logsigmoid": F.logsigmoid,
           "F.tanhshrink": F.tanhshrink, "torch.sin": torch.sin, "torch.exp": torch.exp}
    return fns


def _probe_act(model: nn.Module) -> str | None:
    import gradhealth

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = gradhealth.probe(model, torch.randn(8, 4))
    return {row.name: row.activation for row in res.layers}.get("a", "no layer 'a'")


def _probe_functional() -> dict:
    out = {}
    for name, fn in _functions().items():
        out[f"function|{name}"] = _probe_act(_Fn(fn))
    out["function|F.prelu"] = _probe_act(_Fn(F.prelu, torch.full((1,), 0.25)))
    out["function|F.hardtanh(0,6)"] = _probe_act(_Fn(F.hardtanh, 0.0, 6.0))
    out["function|F.hardtanh(-2,2)"] = _probe_act(_Fn(F.hardtanh, -2.0, 2.0))
    out["function|F.leaky_relu(0.2)"] = _probe_act(_Fn(F.leaky_relu, 0.2))
    for meth in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "abs"):
        out[f"method|{meth}"] = _probe_act(_Method(meth))

    class _Mod(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), act, nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.act(self.a(x)))

    for cls in _classes():
        if cls in ("GLU", "Softmax2d"):  # change or need another shape
            continue
        out[f"module|{cls}"] = _probe_act(_Mod(_module(cls)))
    return out


# --- remedies -----------------------------------------------------------------------------
def _planned(model: nn.Module):
    from gradhealth.remedies import he_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = he_(model)
    row = {c.layer: [c.activation, c.source] for c in s.changed}
    return row.get("a", row.get("0")) or ["unmatched", dict(s.unmatched).get("a", dict(s.unmatched).get("0"))]


def _planner() -> dict:
    out = {}
    for cls in _classes():
        out[f"module|{cls}"] = _planned(nn.Sequential(nn.Linear(4, 4), _module(cls), nn.Linear(4, 2)))
    out["module|LeakyReLU(0.2)"] = _planned(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)))
    for name, fn in _functions().items():
        out[f"function|{name}"] = _planned(_Fn(fn))
    out["function|F.leaky_relu(0.2)"] = _planned(_Fn(F.leaky_relu, 0.2))
    for meth in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "abs"):
        out[f"method|{meth}"] = _planned(_Method(meth))
    return out


def _builders() -> dict:
    from gradhealth.errors import ParameterError
    from gradhealth.remedies import replace_activation_

    out = {}
    names = ("relu", "relu6", "leaky_relu", "leaky_relu(0.2)", "elu", "selu", "gelu", "swish", "silu",
             "tanh", "sigmoid", "hard_tanh", "hardtanh", "softplus", "erf", "linear", "mish", "nope")
    for new in names:
        model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2))
        try:
            replace_activation_(model, "sigmoid", new)
            m = model[1]
            out[f"new|{new}"] = [type(m).__name__, getattr(m, "negative_slope", None)]
        except ParameterError as exc:
            out[f"new|{new}"] = str(exc)
    for old in names:
        model = nn.Sequential(nn.Linear(2, 2), nn.Hardtanh(), nn.Linear(2, 2), nn.ReLU6(), nn.Linear(2, 2))
        try:
            out[f"old|{old}"] = replace_activation_(model, old, "relu")
        except ParameterError as exc:
            out[f"old|{old}"] = str(exc)
    zoo = nn.Sequential(*[_module(c) for c in _classes()])
    try:
        out["present"] = replace_activation_(zoo, "erf", "relu")
    except ParameterError as exc:
        out["present"] = str(exc)
    return out


_SECTIONS = {"watch_modules": _watch_modules, "watch_layers": _watch_layers,
             "watch_act_stats": _watch_act_stats, "stats_family": _stats_family,
             "stats_table": _stats_table, "probe_functional": _probe_functional,
             "planner": _planner, "builders": _builders}


@pytest.mark.parametrize("section", list(_SECTIONS))
def test_vocab_tables(section):
    got = json.loads(json.dumps(_r(_SECTIONS[section]())))
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("GRADHEALTH_UPDATE_GOLDEN") == "1":
        golden[section] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden section rewritten")
    want = golden[section]
    for key in want:
        assert got.get(key) == want[key], f"{section}: {key} differs from the golden output"
    assert got == want


# --- the one table (gradhealth._vocab) reproduces every consumer's view -----------------------
def _golden(section: str) -> dict:
    return json.loads(GOLDEN.read_text())[section]


def _base(planned) -> str | None:
    """The activation name of a planner row (``"leaky_relu(0.01)"`` -> ``"leaky_relu"``)."""
    return None if planned[0] == "unmatched" else planned[0].split("(")[0]


def test_vocab_is_torch_free_on_import():
    import subprocess
    import sys

    code = ("import sys, gradhealth._vocab as v; assert v.canonical_name('SiLU') == 'swish'; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_vocab_modules_as_the_watcher_reads_them():
    from gradhealth import _vocab

    want = _golden("watch_modules")
    for cls in _classes():
        a = _vocab.module_activation(_module(cls))
        assert (None if a is None else [a.watch_name, a.family]) == want[cls], cls


def test_vocab_roles_as_the_watcher_reads_them():
    from gradhealth import _vocab

    want = _golden("watch_layers")
    seen = set()
    for name, mod in _layer_zoo().named_modules():
        direct = list(mod.parameters(recurse=False))
        a = _vocab.module_activation(mod)
        if not direct and a is None:
            assert name not in want, name
            continue
        seen.add(name)
        row = [type(mod).__name__, _vocab.layer_role(mod, direct), a.family if a else "",
               a.watch_name if a else "", sum(p.numel() for p in direct)]
        assert row == want[name], name
    assert seen == set(want)


def test_vocab_families_as_stats_reads_them():
    from gradhealth import _vocab

    want = _golden("stats_family")
    for s in _SPELLINGS:
        fam, bounds = _vocab.family_of(s)
        assert [fam, None if bounds is None else list(bounds)] == want[repr(s)], s
    table = _golden("stats_table")
    assert list(_vocab.ACTIVATIONS) == table["__order__"]
    for name, a in _vocab.ACTIVATIONS.items():
        assert [a.family, None if a.bounds is None else list(a.bounds)] == table[name], name
        assert _vocab.canonical_name(name) == name
        assert _vocab.canonical_name(a.watch_name) == name


def test_vocab_functions_as_the_probe_reads_them():
    from gradhealth import _vocab

    want = _golden("probe_functional")
    table = _vocab.function_activations()
    for label, fn in _functions().items():
        assert table.get(fn) == want[f"function|{label}"], label
    assert table.get(F.prelu) == want["function|F.prelu"]
    for meth in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "abs"):
        for owner in (torch.Tensor, torch._C.TensorBase):
            assert table.get(getattr(owner, meth)) == want[f"method|{meth}"], meth
    # what the probe recognises through a module is the function its forward calls
    assert want["module|Hardswish"] == "hard_swish" and _vocab.module_activation(nn.Hardswish()) is None


def test_vocab_as_the_planner_reads_it():
    from gradhealth import _vocab

    want = _golden("planner")
    for cls in _classes():
        a = _vocab.module_activation(_module(cls), planner=True)
        row = want[f"module|{cls}"]
        if a is not None:
            assert [a.theory, "detected"] == [_base(row), row[1]], cls
        else:  # not an activation: unmatched, or a pass-through / output (-> linear)
            assert _base(row) in (None, "linear") and row[1] != "detected", cls
    fns = _vocab.planner_functions()
    for label, fn in _functions().items():
        assert fns.get(fn) == _base(want[f"function|{label}"]), label
    meths = _vocab.planner_methods()
    for meth in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "abs"):
        assert meths.get(meth) == _base(want[f"method|{meth}"]), meth


def test_vocab_builders_as_replace_activation_reads_them():
    from gradhealth import _vocab

    want = _golden("builders")
    builders = _vocab.builder_classes()
    listed = re.search(r"must be one of ([a-z_, ]+)\. Got 'erf'", want["new|erf"]).group(1).split(", ")
    assert sorted(builders) == listed
    for name, cls in builders.items():
        assert want[f"new|{name}"][0] == cls.__name__, name
