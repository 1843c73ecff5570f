"""Characterization: remedies as they behaved before the redesign (issue 8), to the byte.

The oracle is ``gradhealth.remedies`` before ``init.py`` was split and before ``prescribe``'s
``if`` chain became a table: every output below was written to ``golden_remedies.json`` by
this test with ``GRADHEALTH_UPDATE_GOLDEN=1``. A refactor that changes a prescription, the
activation the planner assigns to a layer, the numbers an initialiser draws, a summary, a
warning or an error message fails here. Regenerate only for an intended behaviour change,
and say so in the commit.

Sections:
    prescribe     ``prescribe(kind, evidence, **kw)`` for every kind x a set of evidence dicts
    planner       per model and initialiser: (layer, activation, source) and the unmatched list
    initialisers  full ``InitSummary.to_dict()`` (std to 6 digits), ``str(summary)``, warnings
    vocabulary    the activation each torch module / function / method is read as
    errors       the message of a ParameterError for bad arguments
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
from golden_compare import same
from torch import nn

from gradhealth.errors import ParameterError
from gradhealth.events import KINDS
from gradhealth.remedies import (
    critical_,
    gaussian_,
    he_,
    lecun_,
    lsuv_,
    orthogonal_,
    prescribe,
    replace_activation_,
    xavier_,
    zero_init_residual_,
)

GOLDEN = Path(__file__).with_name("golden_remedies.json")


def _r(x):
    """JSON-stable value: floats to 6 significant digits, NaN/inf spelled out, memory
    addresses in reprs (``<built-in method sin at 0x7f...>``) blanked."""
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
    return str(x)


# --- prescribe ------------------------------------------------------------------------------
def _evidences() -> dict[str, tuple[dict, dict]]:
    """name -> (evidence, keyword arguments of prescribe)."""
    ev: dict[str, tuple[dict, dict]] = {
        "empty": ({}, {}),
        "full": ({"growth_per_layer": 1.38, "chi_1_estimate": 1.9, "activation": "tanh", "sigma_w2": 4.0,
                  "sigma_b2": 0.05, "worst_layer": "3", "gsc": 2.1, "fraction": 0.42, "grad_norm": 40.0,
                  "median": 2.0, "mad": 0.3, "loss": 9.0, "lr": 0.1, "update_ratio": 0.05,
                  "is_recurrent": False, "spectral_radius": None, "has_norm": False,
                  "has_residual": False, "depth": 20}, {}),
        "junk": ({"growth_per_layer": "nan", "chi_1_estimate": None, "activation": 3, "sigma_w2": "inf",
                  "sigma_b2": [1], "worst_layer": "", "gsc": "x", "fraction": float("nan"),
                  "grad_norm": torch.tensor(float("inf")), "median": np.float32(2.0), "mad": "yes",
                  "loss": -1, "lr": object(), "update_ratio": "", "is_recurrent": 0,
                  "spectral_radius": 1e308 * 10, "has_norm": "1", "has_residual": None, "depth": "20"}, {}),
        "tensors": ({"grad_norm": torch.tensor(12.0), "median": np.float64(1.0), "mad": torch.tensor(0.1),
                     "update_ratio": torch.tensor(1e-6), "lr": 1e-3, "activation": "relu"}, {}),
    }
    for act in ("relu", "relu6", "leaky_relu", "leaky_relu(alpha=0.2)", "tanh", "sigmoid", "linear",
                "gelu", "selu", "swish", "elu", "softplus", "hard_tanh", "erf", "Tanh", "no_such_act"):
        ev[f"vanish_{act}"] = ({"activation": act, "growth_per_layer": 0.7, "depth": 10, "sigma_w2": 1.0,
                                "chi_1_estimate": 0.6, "worst_layer": "0"}, {})
    for act in ("relu", "tanh", "sigmoid", "linear", None):
        ev[f"explode_{act}"] = ({"activation": act, "growth_per_layer": 1.4, "depth": 30, "gsc": 12.0,
                                 "median": 2.0, "mad": 0.3, "grad_norm": 40.0}, {})
    for sb2 in (0.005, 0.05, 0.3):
        ev[f"tanh_sb2_{sb2}"] = ({"activation": "tanh", "sigma_b2": sb2, "sigma_w2": 1.0,
                                  "chi_1_estimate": 1.3}, {})
    ev["sigmoid_sb2"] = ({"activation": "sigmoid", "sigma_b2": 0.05, "fraction": 0.9, "sigma_w2": 16.0}, {})
    ev["overflow"] = ({"activation": "relu", "growth_per_layer": 1e3, "depth": 400}, {})
    ev["zero_growth"] = ({"growth_per_layer": 0.0, "depth": 5}, {})
    ev["rnn_rho"] = ({"is_recurrent": True, "spectral_radius": 3.0, "depth": 100, "activation": "tanh"}, {})
    ev["rnn_step"] = ({"is_recurrent": True, "growth_per_step": 1.2, "depth": 50}, {})
    ev["rnn_relu_sb2"] = ({"spectral_radius": 0.5, "activation": "relu", "sigma_b2": 0.2}, {})
    ev["rnn_sigmoid"] = ({"is_recurrent": "yes", "activation": "sigmoid", "growth_per_layer": 0.5}, {})
    ev["arch_plain"] = ({"has_norm": False, "has_residual": False, "depth": 20, "activation": "relu"}, {})
    ev["arch_ok"] = ({"has_norm": True, "has_residual": True, "activation": "gelu"}, {})
    ev["clip_median_only"] = ({"median": 2.0, "grad_norm": 9.0}, {})
    ev["clip_median_zero"] = ({"median": 0.0, "mad": 0.1, "grad_norm": 3.0}, {})
    ev["clip_gn_only"] = ({"grad_norm": 123.4}, {})
    ev["lr_big"] = ({"lr": 0.1, "grad_norm": 1e4, "median": 3.0, "mad": 1.0, "worst_layer": "fc1"}, {})
    ev["lr_small"] = ({"lr": 3e-4, "fraction": 0.6, "worst_layer": "blocks.2.act"}, {})
    ev["saturated_at_crit"] = ({"activation": "tanh", "sigma_w2": 1.05, "fraction": 0.3}, {})
    ev["saturated_far"] = ({"activation": "tanh", "sigma_w2": 4.0, "fraction": 0.7, "sigma_b2": 0.05}, {})
    ev["saturated_relu"] = ({"activation": "relu", "fraction": 0.5}, {})
    ev["loss"] = ({"loss": 9.0, "median": 2.0, "mad": 0.3, "lr": 0.1, "grad_norm": 50.0}, {})
    ev["loss_no_mad"] = ({"loss": 9.0, "median": 2.0, "mad": 0.0}, {})
    ev["loss_only"] = ({"loss": 9.0}, {})
    ev["ur_tiny_lr"] = ({"update_ratio": 1e-6, "lr": 1e-3, "worst_layer": "0"}, {})
    ev["ur_zero_lr"] = ({"update_ratio": 0.0, "lr": 1e-3}, {})
    ev["ur_tiny"] = ({"update_ratio": 1e-5}, {})
    ev["ur_big_lr"] = ({"update_ratio": 0.05, "lr": 0.1, "median": 1.0, "mad": 0.2}, {})
    ev["ur_big"] = ({"update_ratio": 0.02}, {})
    ev["ur_border"] = ({"update_ratio": 1e-4, "lr": 0.01}, {})
    ev["kw_activation"] = ({"activation": "relu", "growth_per_layer": 0.5}, {"activation": "tanh"})
    ev["kw_activation_obj"] = ({}, {"activation": type("A", (), {"name": "leaky_relu(0.1)"})()})
    ev["kw_layer"] = ({"worst_layer": "a", "fraction": 0.2}, {"layer": "b"})
    ev["kw_model_info"] = ({"depth": 12, "activation": "relu"},
                           {"model_info": {"depth": 40, "has_norm": False, "has_residual": False,
                                           "is_recurrent": False, "activation": "tanh"}})
    ev["kw_model_info_rnn"] = ({"spectral_radius": 2.0}, {"model_info": {"is_recurrent": True, "depth": 64}})
    return ev


def _prescribe_section() -> dict:
    out = {}
    for name, (evidence, kw) in _evidences().items():
        for kind in KINDS:
            out[f"{kind}|{name}"] = [p.to_dict() for p in prescribe(kind, evidence, **kw)]
    try:
        prescribe("no_such_kind", {})
    except ParameterError as exc:
        out["error|unknown_kind"] = str(exc)
    return out


# --- models for the planner and the initialisers ------------------------------------------
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = h + torch.tanh(self.b(h))
        h = self.c(h).sigmoid()
        return F.log_softmax(self.d(h), -1)


class FunctionalMore(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.d, self.e, self.f = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.leaky_relu(self.a(x), 0.3)
        h = F.gelu(F.dropout(self.b(h).view(-1, 8), 0.1))
        h = F.leaky_relu(self.c(h), negative_slope=0.05)
        h = F.elu(self.d(h).reshape(h.shape[0], 8))
        h = F.silu(self.e(h) * 2)
        return self.f(h).softmax(-1)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b, self.c = nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.c(torch.relu(self.b(self.act(self.a(x)))))


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.sin(self.a(x))
        h = torch.tanh(self.b(h))
        return self.c(h)


class Fork(nn.Module):
    """One layer whose output reaches two different activations."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.relu(h)) + self.c(torch.tanh(h))


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.spare, self.b = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.up = nn.ConvTranspose2d(8, 4, 2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = F.max_pool2d(nn.functional.selu(self.c2(h)), 2)
        h = self.pool(h)
        h = torch.sigmoid(self.up(h))
        return self.fc(torch.flatten(h, 1))


class SeqModel(nn.Module):
    def __init__(self, cell: str):
        super().__init__()
        kw = {"nonlinearity": "relu"} if cell == "RNN" else {}
        if cell == "LSTMproj":
            self.rnn = nn.LSTM(3, 8, num_layers=2, batch_first=True, proj_size=4)
            hid = 4
        else:
            self.rnn = getattr(nn, cell)(3, 8, num_layers=2, batch_first=True, **kw)
            hid = 8
        self.head = nn.Linear(hid, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class ResBlock(nn.Module):
    def __init__(self, d: int, norm: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d) if norm else None

    def forward(self, x):
        h = self.fc2(F.relu(self.fc1(x)))
        if self.norm is not None:
            h = self.norm(h)
        return x + h


class ResNet(nn.Module):
    def __init__(self, norm: bool = False):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([ResBlock(8, norm) for _ in range(3)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.out(h)


class AttnBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        x = x + self.attn(x, x, x)[0]
        return x + F.gelu(self.fc(x))


class OddBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.sin(x) + self.a(x)


def _mlp(act: type[nn.Module] | None, depth: int = 4, width: int = 16, **kw) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(6, width)]
    for _ in range(depth - 2):
        if act is not None:
            layers.append(act(**kw))
        layers.append(nn.Linear(width, width))
    if act is not None:
        layers.append(act(**kw))
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)


def _models() -> dict:
    """name -> (factory, example input)."""
    x6 = torch.randn(8, 6, generator=torch.Generator().manual_seed(5))
    x4 = torch.randn(8, 4, generator=torch.Generator().manual_seed(6))
    return {
        "mlp_relu": (lambda: _mlp(nn.ReLU), x6),
        "mlp_tanh": (lambda: _mlp(nn.Tanh), x6),
        "mlp_sigmoid": (lambda: _mlp(nn.Sigmoid), x6),
        "mlp_leaky": (lambda: _mlp(nn.LeakyReLU, negative_slope=0.2), x6),
        "mlp_prelu": (lambda: _mlp(nn.PReLU), x6),
        "mlp_linear": (lambda: _mlp(None), x6),
        "mlp_norm": (lambda: nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                                           nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 16), nn.LayerNorm(16),
                                           nn.LeakyReLU(0.2), nn.Linear(16, 3), nn.LogSoftmax(-1)), x6),
        "mlp_unknown_module": (lambda: nn.Sequential(nn.Linear(6, 16), nn.Softsign(), nn.Linear(16, 3)), x6),
        "single": (lambda: nn.Linear(6, 3), x6),
        "functional": (Functional, x4),
        "functional_more": (FunctionalMore, x4),
        "untraceable": (Untraceable, x4),
        "unknown_op": (UnknownOp, x4),
        "fork": (Fork, x4),
        "unused": (Unused, x4),
        "conv": (ConvNet, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))),
        "rnn_relu": (lambda: SeqModel("RNN"), torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(8))),
        "lstm": (lambda: SeqModel("LSTM"), torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(8))),
        "lstm_proj": (lambda: SeqModel("LSTMproj"), torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(8))),
        "gru": (lambda: SeqModel("GRU"), torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(8))),
        "resnet": (ResNet, x4),
        "resnet_norm": (lambda: ResNet(norm=True), x4),
        "attn": (AttnBlock, torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(9))),
        "odd_branch": (OddBranch, x4),
    }


def _ours(caught) -> list[str]:
    """The warnings gradhealth gave. torch's own (e.g. the oneDNN note of an LSTM with
    projections) are left out: torch emits some once per process, so whether they appear
    depends on which test ran first."""
    return [str(w.message) for w in caught if "/torch/" not in str(w.filename).replace("\\", "/")]


def _call(fn, *args, **kwargs) -> dict:
    """Run an initialiser; its summary (or error) and the warnings it gave, JSON-ready."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = fn(*args, **kwargs)
        except ParameterError as exc:
            return {"error": str(exc), "warnings": _ours(caught)}
    out = {"warnings": _ours(caught)}
    if hasattr(res, "to_dict"):
        out["summary"] = _r(res.to_dict())
        out["text"] = str(res)
    else:
        out["result"] = _r(res)
    return out


_INITS = {
    "he": lambda m, x: he_(m),
    "he_fan_out_uniform": lambda m, x: he_(m, mode="fan_out", distribution="uniform"),
    "he_trunc_tanh": lambda m, x: he_(m, activation="tanh", distribution="truncated_normal"),
    "he_default": lambda m, x: he_(m, default_activation="relu"),
    "he_override": lambda m, x: he_(m, overrides={"*": "selu", "0": "gelu"}),
    "xavier": lambda m, x: xavier_(m),
    "xavier_normal": lambda m, x: xavier_(m, distribution="normal", default_activation="tanh"),
    "lecun": lambda m, x: lecun_(m),
    "orthogonal": lambda m, x: orthogonal_(m),
    "orthogonal_gain": lambda m, x: orthogonal_(m, gain=1.0),
    "critical": lambda m, x: critical_(m, default_activation="tanh"),
    "critical_sb2": lambda m, x: critical_(m, activation="tanh", sigma_b2=0.05),
    "critical_orth": lambda m, x: critical_(m, distribution="orthogonal", default_activation="relu"),
    "gaussian": lambda m, x: gaussian_(m, sigma_w2=4.0, sigma_b2=0.1),
    "lsuv": lambda m, x: lsuv_(m, x),
    "lsuv_none": lambda m, x: lsuv_(m, x, init="none", tol=0.01, max_iter=3),
    "zero_residual": lambda m, x: zero_init_residual_(m),
}
# Expensive or meaningless pairs are left out to keep the test fast; every initialiser runs on
# every model of the first group.
_FULL_MODELS = ("mlp_relu", "mlp_norm", "functional", "untraceable", "unknown_op", "conv", "lstm",
                "resnet", "single")


def _planner_section() -> dict:
    """Which activation every initialiser that matches one assigns to every layer."""
    out = {}
    for name, (factory, _) in _models().items():
        for init in ("he", "xavier", "orthogonal", "he_default", "he_override"):
            torch.manual_seed(0)
            m = factory()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    s = _INITS[init](m, None)
                except ParameterError as exc:
                    out[f"{name}|{init}"] = {"error": str(exc)}
                    continue
            out[f"{name}|{init}"] = {"changed": [[c.layer, c.activation, c.source] for c in s.changed],
                                     "unmatched": [list(u) for u in s.unmatched]}
    return out


def _initialisers_section() -> dict:
    out = {}
    models = _models()
    for name, (factory, x) in models.items():
        inits = _INITS if name in _FULL_MODELS else {k: _INITS[k] for k in ("he", "critical", "lsuv",
                                                                               "zero_residual")}
        for init, fn in inits.items():
            torch.manual_seed(0)
            m = factory()
            torch.manual_seed(1)
            out[f"{name}|{init}"] = _call(fn, m, x)
    torch.manual_seed(0)
    m = _mlp(nn.Sigmoid)
    out["mlp_sigmoid|replace"] = _call(replace_activation_, m, "sigmoid", "leaky_relu(0.1)")
    out["mlp_sigmoid|replace_again"] = _call(replace_activation_, m, "sigmoid", "relu")
    shared = nn.Tanh()
    out["shared|replace"] = _call(replace_activation_, nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2),
                                                                     shared, nn.Linear(2, 2)), "tanh", "swish")
    out["resnet|zero_layers"] = _call(zero_init_residual_, ResNet(), layers=["blocks.*.fc2"])
    return out


# --- the activation vocabulary as the planner reads it --------------------------------------
_ACT_CLASSES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU", "Tanh", "Sigmoid",
                "Hardtanh", "Softplus", "Mish", "Softsign", "Hardswish", "Tanhshrink", "CELU", "GLU")


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(4, 4), nn.Linear(4, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


class _Method(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.a, self.b, self.method = nn.Linear(4, 4), nn.Linear(4, 2), method

    def forward(self, x):
        return self.b(getattr(self.a(x), self.method)())


def _vocabulary_section() -> dict:
    out = {}

    def first(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = he_(m)
        row = {c.layer: [c.activation, c.source] for c in s.changed}
        return row.get("a", row.get("0")) or ["unmatched", dict(s.unmatched).get("a", dict(s.unmatched).get("0"))]

    for cls in _ACT_CLASSES:
        if hasattr(nn, cls):
            out[f"module|{cls}"] = first(nn.Sequential(nn.Linear(4, 4), getattr(nn, cls)(), nn.Linear(4, 2)))
    fns = {"F.relu": F.relu, "torch.relu": torch.relu, "F.relu6": F.relu6, "F.leaky_relu": F.leaky_relu,
           "F.elu": F.elu, "F.selu": F.selu, "torch.selu": torch.selu, "F.gelu": F.gelu, "F.silu": F.silu,
           "torch.tanh": torch.tanh, "F.tanh": F.tanh, "torch.sigmoid": torch.sigmoid, "F.sigmoid": F.sigmoid,
           "F.hardtanh": F.hardtanh, "F.softplus": F.softplus, "F.mish": F.mish, "F.softsign": F.softsign,
           "F.hardswish": F.hardswish, "torch.sin": torch.sin}
    for name, fn in fns.items():
        out[f"function|{name}"] = first(_Fn(fn))
    for meth in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "abs"):
        out[f"method|{meth}"] = first(_Method(meth))
    return out


# --- error messages -------------------------------------------------------------------------
def _errors_section() -> dict:
    m = _mlp(nn.ReLU)
    cases = {
        "he_mode": lambda: he_(m, mode="fan"),
        "he_distribution": lambda: he_(m, distribution="laplace"),
        "he_layers": lambda: he_(m, layers="nope.*"),
        "he_layers_empty": lambda: he_(m, layers=[]),
        "he_overrides_type": lambda: he_(m, overrides=["0"]),
        "he_overrides_pattern": lambda: he_(m, overrides={"x": "relu"}),
        "he_activation": lambda: he_(m, activation="nope"),
        "he_activation_slope": lambda: he_(m, activation="leaky_relu(a)"),
        "he_model": lambda: he_("model"),
        "he_no_layers": lambda: he_(nn.Sequential(nn.ReLU())),
        "xavier_distribution": lambda: xavier_(m, distribution="laplace"),
        "orthogonal_gain": lambda: orthogonal_(m, gain=-1),
        "critical_sb2": lambda: critical_(m, sigma_b2=-1),
        "critical_su2": lambda: critical_(m, sigma_u2=float("nan")),
        "critical_distribution": lambda: critical_(m, distribution="uniform"),
        "critical_no_point": lambda: critical_(m, activation="sigmoid", sigma_b2=0.0),
        "gaussian_sw2": lambda: gaussian_(m, sigma_w2=0),
        "lsuv_tol": lambda: lsuv_(m, torch.zeros(2, 6), tol=0),
        "lsuv_iter": lambda: lsuv_(m, torch.zeros(2, 6), max_iter=0),
        "lsuv_init": lambda: lsuv_(m, torch.zeros(2, 6), init="he"),
        "lsuv_rnn_only": lambda: lsuv_(nn.RNN(3, 4), torch.zeros(2, 5, 3)),
        "lsuv_nan": lambda: lsuv_(m, torch.full((2, 6), float("nan"))),
        "zero_model": lambda: zero_init_residual_(3),
        "zero_none": lambda: zero_init_residual_(m),
        "zero_layers": lambda: zero_init_residual_(m, layers="nope"),
        "zero_untraceable": lambda: zero_init_residual_(Untraceable()),
        "replace_model": lambda: replace_activation_(None, "relu", "tanh"),
        "replace_absent": lambda: replace_activation_(m, "tanh", "relu"),
        "replace_new": lambda: replace_activation_(m, "relu", "erf"),
    }
    out = {}
    for name, fn in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fn()
            except ParameterError as exc:
                out[name] = str(exc)
            else:
                out[name] = "no error"
    return out


_SECTIONS = {"prescribe": _prescribe_section, "planner": _planner_section,
             "initialisers": _initialisers_section, "vocabulary": _vocabulary_section,
             "errors": _errors_section}


@pytest.mark.parametrize("section", list(_SECTIONS))
def test_golden_remedies(section):
    got = json.loads(json.dumps(_r(_SECTIONS[section]())))
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("GRADHEALTH_UPDATE_GOLDEN") == "1":
        golden[section] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden section rewritten")
    want = golden[section]
    for key in want:
        assert same(got.get(key), want[key]), f"{section}: {key} differs from the golden output"
    assert same(got, want)

