"""prescribe(): every diagnosis kind maps to ranked remedies whose code runs as written."""

import ast
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

import gradhealth
import gradhealth.remedies
from gradhealth.errors import ParameterError
from gradhealth.events import KINDS, Prescription
from gradhealth.remedies import prescribe
from gradhealth.remedies.prescribe import EVIDENCE_KEYS

DIAGNOSES = ("vanishing", "exploding", "nonfinite", "dead_units", "saturated", "grad_spike",
             "loss_spike", "update_ratio")

FULL = {"growth_per_layer": 1.38, "chi_1_estimate": 1.9, "activation": "tanh", "sigma_w2": 4.0,
        "sigma_b2": 0.05, "worst_layer": "3", "gsc": 2.1, "fraction": 0.42, "grad_norm": 40.0,
        "median": 2.0, "mad": 0.3, "loss": 9.0, "lr": 0.1, "update_ratio": 0.05,
        "is_recurrent": False, "spectral_radius": None, "has_norm": False, "has_residual": False,
        "depth": 20}
JUNK = {k: v for k, v in zip(EVIDENCE_KEYS, ["nan", None, 3, "inf", [1], {}, "x", float("nan"),
                                               torch.tensor(float("inf")), np.float32(2.0), "yes",
                                               -1, object(), "", 0, 1e308 * 10, "1", None, "20"])}
EVIDENCES = {
    "full": FULL,
    "empty": {},
    "junk": JUNK,
    "relu": {"activation": "relu", "growth_per_layer": 0.7, "depth": 10, "sigma_w2": 1.0},
    "sigmoid": {"activation": "sigmoid", "growth_per_layer": 0.25, "depth": 10},
    "linear": {"activation": "linear", "growth_per_layer": 1.5, "depth": 10},
    "rnn": {"is_recurrent": True, "spectral_radius": 3.0, "depth": 100, "activation": "tanh"},
    "tensors": {"grad_norm": torch.tensor(12.0), "median": np.float64(1.0), "mad": torch.tensor(0.1),
                "update_ratio": torch.tensor(1e-6), "lr": 1e-3, "activation": "relu"},
}


def _gradhealth_calls(code: str) -> list[str]:
    """The gradhealth calls a prescription's code makes (after a leading '#' comment's 'then:';
    several calls are separated by '; ')."""
    if code.startswith("#"):
        code = code.split("then:", 1)[1].strip() if "then:" in code else ""
    return [c.strip() for c in code.split("; ") if c.strip().startswith("gradhealth.")]


def _resolve(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    assert isinstance(node, ast.Name)
    obj = {"gradhealth": gradhealth}[node.id]
    for p in reversed(parts):
        obj = getattr(obj, p)
    return obj


def _check_binds(call_src: str) -> None:
    tree = ast.parse(call_src, mode="eval")
    call = tree.body
    assert isinstance(call, ast.Call), call_src
    fn = _resolve(call.func)
    assert callable(fn)
    sentinel = object()

    def value(n):
        try:
            return ast.literal_eval(n)
        except ValueError:
            return sentinel  # model, optimizer, inputs, model.parameters()

    args = [value(a) for a in call.args]
    kwargs = {k.arg: value(k.value) for k in call.keywords}
    inspect.signature(fn).bind(*args, **kwargs)


def _workbench():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    inputs = torch.randn(32, 8)
    model(inputs).pow(2).mean().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"gradhealth": gradhealth, "model": model, "inputs": inputs, "optimizer": optimizer}


@pytest.mark.parametrize("kind", DIAGNOSES)
@pytest.mark.parametrize("ev", sorted(EVIDENCES))
def test_every_kind_gives_ranked_prescriptions_whose_calls_bind(kind, ev):
    out = prescribe(kind, EVIDENCES[ev])
    assert out and all(isinstance(p, Prescription) for p in out)
    assert [p.rank for p in out] == list(range(1, len(out) + 1))
    assert all(p.kind == kind and p.action and p.reason for p in out)
    calls = [c for p in out for c in _gradhealth_calls(p.code)]
    assert calls, [p.code for p in out]
    assert _gradhealth_calls(out[0].code) or "g['lr']" in out[0].code, out[0]
    for c in calls:
        _check_binds(c)
    assert len({p.code for p in out}) == len(out)


@pytest.mark.parametrize("kind", DIAGNOSES)
def test_prescribed_code_runs_on_a_real_model(kind):
    for ev in ("full", "empty", "tensors"):
        for p in prescribe(kind, EVIDENCES[ev]):
            if p.code.startswith("#"):  # an architecture change first: only binding is checked
                continue
            ns = _workbench()
            code = p.code
            exec(compile(code, "<prescription>", "exec"), ns)  # noqa: S102 - our own strings


def test_reasons_carry_the_numbers():
    p = prescribe("exploding", {"chi_1_estimate": 1.9, "activation": "tanh", "sigma_b2": 0.0,
                                "sigma_w2": 4.0})[0]
    assert p.code == "gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.0)"
    assert "1.9" in p.reason and "sigma_w2 = 1" in p.reason and "now 4" in p.reason
    relu = prescribe("vanishing", {"activation": "relu", "growth_per_layer": 0.5, "depth": 10})[0]
    assert relu.code.startswith("gradhealth.remedies.he_(model") and "x9.77e-04 over 10 layers" in relu.reason
    lin = prescribe("exploding", {"activation": "linear", "growth_per_layer": 1.5, "depth": 20})[0]
    assert lin.code == "gradhealth.remedies.orthogonal_(model, gain=1.0)"
    spike = prescribe("grad_spike", {"grad_norm": 40.0, "median": 2.0, "mad": 0.3})[0]
    assert spike.code == "gradhealth.remedies.clip_grad_norm_(model.parameters(), max_norm=4.2)"
    assert "20x the median" in spike.reason
    nf = prescribe("nonfinite", {})[0]
    assert nf.code == "gradhealth.remedies.skip_nonfinite(optimizer, max_consecutive_skips=10)"
    small = prescribe("update_ratio", {"update_ratio": 1e-6, "lr": 1e-3})
    assert "g['lr'] = 0.01" in small[0].code


def test_activation_and_layer_arguments_win_over_evidence():
    p = prescribe("vanishing", {"activation": "tanh"}, activation="relu")[0]
    assert "he_" in p.code
    p = prescribe("dead_units", {"worst_layer": "a", "fraction": 0.5}, layer="fc2")[0]
    assert "50% of units in fc2" in p.reason
    p = prescribe("vanishing", {}, model_info={"activation": "relu", "depth": 7})[0]
    assert "he_" in p.code


def test_healthy_internal_guard_and_unknown_kind():
    assert prescribe("healthy", FULL) == [] and prescribe("internal", {}) == []
    assert prescribe("guard", {})[0].code.startswith("gradhealth.remedies.clip_grad_norm_")
    assert set(KINDS) >= set(DIAGNOSES)
    with pytest.raises(ParameterError, match="'kind' parameter of prescribe"):
        prescribe("exploded", {})


def test_critical_fallback_without_bias_variance():
    # tanh at sigma_b2 = 0 is critical at sigma_w2 = 1 (closed form), whatever theory says
    from gradhealth.remedies.prescribe import critical_sigma_w2_or_none

    assert critical_sigma_w2_or_none("tanh", 0.0) == pytest.approx(1.0, rel=1e-3)
    assert critical_sigma_w2_or_none("relu", 0.0) == pytest.approx(2.0, rel=1e-3)
    assert critical_sigma_w2_or_none(None) is None
    assert math.isfinite(critical_sigma_w2_or_none("linear", 0.0))


def test_sigmoid_prescription_swaps_to_relu_and_runs():
    out = prescribe("vanishing", {"activation": "sigmoid", "growth_per_layer": 0.14, "depth": 10})
    assert out[0].code == ("gradhealth.remedies.replace_activation_(model, 'sigmoid', 'relu'); "
                           "gradhealth.remedies.he_(model)")
    assert any(p.code.startswith("gradhealth.remedies.critical_(model, activation='sigmoid'") for p in out)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    exec(out[0].code, {"gradhealth": gradhealth, "model": model})  # noqa: S102
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    # saturated at the critical point already: do not prescribe critical_ again
    sat = prescribe("saturated", {"activation": "sigmoid", "fraction": 0.6, "sigma_w2": 104.0})
    assert sat[0].code.startswith("gradhealth.remedies.replace_activation_")
    assert not any("critical_" in p.code for p in sat)


def test_recurrent_prescriptions_rank_the_critical_orthogonal_init_first():
    out = prescribe("exploding", {"is_recurrent": True, "spectral_radius": 3.0, "growth_per_layer": 1.3,
                                  "depth": 100, "activation": "tanh"})
    assert out[0].code == "gradhealth.remedies.critical_(model, distribution='orthogonal')"
    assert "x1.3 per time step" in out[0].reason and "spectral radius 3" in out[0].reason
    assert out[1].code == "gradhealth.remedies.orthogonal_(model, gain=1.0)"
    assert not any("residual" in p.action for p in out)  # 100 steps is not a deep plain stack
    van = prescribe("vanishing", {"is_recurrent": True, "growth_per_step": 0.9, "depth": 100})
    assert "x0.9 per time step" in van[0].reason


def test_tiny_bias_variance_is_snapped_to_zero():
    p = prescribe("vanishing", {"activation": "tanh", "sigma_b2": 0.0049})[0]
    assert p.code == "gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.0)"
    p = prescribe("vanishing", {"activation": "tanh", "sigma_b2": 0.05123})[0]
    assert p.code == "gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.051)"


@pytest.mark.parametrize("kind", DIAGNOSES)
def test_extreme_evidence_never_raises(kind):
    for ev in ({"growth_per_layer": 1e10, "depth": 1e6, "chi_1_estimate": 1e300},
               {"growth_per_layer": 1e-300, "depth": 1e6, "is_recurrent": True, "spectral_radius": 1e200},
               {"median": 1e-300, "mad": 1e300, "grad_norm": 1e308, "lr": 1e-300, "update_ratio": 1e300,
                "fraction": 2.0, "sigma_w2": -1.0, "sigma_b2": -1.0, "activation": 3},
               # exact zeros: a layer whose update ratio is 0.0 (it did not move at all)
               {k: 0.0 for k in ("growth_per_layer", "chi_1_estimate", "sigma_w2", "sigma_b2", "gsc",
                                 "fraction", "grad_norm", "median", "mad", "loss", "lr",
                                 "update_ratio", "spectral_radius", "depth")}):
        out = prescribe(kind, ev)
        assert out
        for c in (c for p in out for c in _gradhealth_calls(p.code)):
            _check_binds(c)


def test_leaky_relu_prescription_keeps_the_models_own_slope():
    import torch
    from torch import nn

    from gradhealth.remedies import apply_prescription

    torch.manual_seed(0)
    m = nn.Sequential(*[x for _ in range(6) for x in (nn.Linear(64, 64), nn.LeakyReLU(0.5))], nn.Linear(64, 2))
    p = prescribe("vanishing", {"activation": "leaky_relu", "growth_per_layer": 0.5})[0]
    apply_prescription(p, m)
    var = m[0].weight.var().item() * 64
    assert var == pytest.approx(2 / (1 + 0.5 ** 2), rel=0.08)  # He for slope 0.5 (1.6), not 0.01 (2.0)


def test_every_kind_has_one_rule_in_the_table():
    """prescribe is a table kind -> rule: a new kind without a rule fails here, not silently."""
    from gradhealth.remedies.prescribe import _RULES

    assert set(_RULES) == set(KINDS)
    assert [k for k, r in _RULES.items() if r is None] == ["healthy", "internal"]
    assert _RULES["guard"] is _RULES["nonfinite"] and _RULES["vanishing"] is _RULES["exploding"]


def test_apply_names_keep_their_old_import_path():
    import importlib

    from gradhealth.remedies import _apply

    # the attribute gradhealth.remedies.prescribe is the function; the module is in sys.modules
    prescribe_module = importlib.import_module("gradhealth.remedies.prescribe")

    for name in ("apply_prescription", "applies_to_model", "MODEL_REMEDIES"):
        assert getattr(prescribe_module, name) is getattr(_apply, name)
