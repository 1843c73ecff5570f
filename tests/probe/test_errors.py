"""User mistakes get clear errors naming what is wrong and what to do, never a bare traceback."""

import math

import pytest
import torch
from torch import nn

from gradhealth.errors import GradHealthError, ModelError, NonFiniteError, ParameterError
from gradhealth.probe import Thresholds, probe


def test_model_without_parameters():
    with pytest.raises(ModelError, match="has no parameters"):
        probe(nn.ReLU(), torch.randn(3, 4))


def test_not_a_module_and_bad_inputs():
    with pytest.raises(ParameterError, match="'model'"):
        probe(lambda x: x, torch.randn(3))
    with pytest.raises(ParameterError, match="'inputs'"):
        probe(nn.Linear(2, 2), "not a tensor")
    with pytest.raises(ParameterError, match="'inputs'"):
        probe(nn.Linear(2, 2), {"x": 1.0})


def test_wrong_input_shape_shows_the_models_error_and_the_module():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ModelError) as info:
        probe(model, torch.randn(4, 12))
    msg = str(info.value)
    assert "mat1 and mat2 shapes cannot be multiplied" in msg
    assert "input[0]: Tensor(4, 12) float32" in msg
    assert "module '0'" in msg and "in_features=10" in msg
    assert isinstance(info.value.__cause__, RuntimeError)


def test_wrong_shape_deeper_in_the_model_names_that_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(5, 2)  # mismatch: 6 -> 5

        def forward(self, x, scale):
            return self.b(self.a(x) * scale)

    with pytest.raises(ModelError) as info:
        probe(Net(), (torch.randn(3, 4), torch.tensor(2.0)))
    msg = str(info.value)
    assert "module 'b'" in msg and "input[1]: Tensor() float32" in msg


def test_forward_already_nonfinite_names_the_first_module():
    model = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(40)])
    with torch.no_grad():
        for m in model:
            m.weight.copy_(100.0 * torch.eye(16))  # 100**40 overflows float32 at layer ~19
    with pytest.raises(NonFiniteError) as info:
        probe(model, torch.randn(4, 16))
    msg = str(info.value)
    assert "forward pass itself is non-finite" in msg
    first = info.value.diagnosis["first_module"]
    assert first in {str(i) for i in range(17, 22)}, first
    assert f"module {first!r}" in msg and "x100 per layer" in msg


def test_nan_inputs_and_nonfinite_loss():
    model = nn.Linear(3, 2)
    with pytest.raises(NonFiniteError, match=r"input\[0\].*NaN"):
        probe(model, torch.tensor([[1.0, math.nan, 0.0]]))
    with pytest.raises(NonFiniteError, match="loss is"):
        probe(model, torch.randn(4, 3), loss_fn=lambda out, t: out.sum() * math.inf)


def test_bad_loss_functions():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with pytest.raises(ModelError, match="scalar"):
        probe(model, x, loss_fn=lambda out, t: out)
    with pytest.raises(ModelError, match="loss_fn raised"):
        probe(model, x, loss_fn=lambda out, t: out + t)
    with pytest.raises(ModelError, match="does not depend"):
        probe(model, x, loss_fn=lambda out, t: torch.tensor(1.0))
    with pytest.raises(ParameterError, match="'loss_fn'"):
        probe(model, x, loss_fn="hinge")
    with pytest.raises(ModelError, match="'ce' needs"):
        probe(_Scalar(), x, loss_fn="ce")


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x).squeeze(-1)


def test_outputs_without_floats_or_gradient():
    class Argmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x).argmax(-1)

    with pytest.raises(ModelError, match="no floating-point tensor"):
        probe(Argmax(), torch.randn(4, 3))

    class NoGrad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            with torch.no_grad():
                return self.fc(x)

    with pytest.raises(ModelError, match="does not require grad"):
        probe(NoGrad(), torch.randn(4, 3))


def test_huge_model_says_what_it_costs_and_offers_a_layer_filter():
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    with pytest.raises(ModelError) as info:
        probe(model, torch.randn(4, 100), max_params=1000)
    msg = str(info.value)
    assert "11,110 parameters" in msg and "max_params=1,000" in msg
    assert "layers='PATTERN'" in msg and "--layers" in msg and "backward passes" in msg
    r = probe(model, torch.randn(4, 100), max_params=1000, layers="2")  # a filter opts in
    assert [lr.name for lr in r.layers] == ["2"]


def test_parameter_validation():
    model, x = nn.Linear(3, 2), torch.randn(4, 3)
    for kw, name in [({"n_probes": 0}, "n_probes"), ({"mode": "test"}, "mode"),
                     ({"lanczos_steps": 0}, "lanczos_steps"), ({"jacobian_batch": 0}, "jacobian_batch"),
                     ({"layers": "nomatch*"}, "layers"), ({"layers": []}, "layers"),
                     ({"thresholds": {"ratio": 3}}, "thresholds"), ({"max_params": 0}, "max_params")]:
        with pytest.raises(ParameterError, match=f"'{name}'"):
            probe(model, x, **kw)
    with pytest.raises(ParameterError, match="'ratio'"):
        Thresholds(ratio=0.5)
    with pytest.raises(ParameterError, match="'dead'"):
        Thresholds(dead=1.5)


def test_every_error_is_a_gradhealth_error():
    for exc in (ModelError, NonFiniteError, ParameterError):
        assert issubclass(exc, GradHealthError)
