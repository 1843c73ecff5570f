"""Every closed-form derivative in theory.activations against torch.autograd (the oracle)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradhealth.errors import ParameterError
from gradhealth.theory.activations import activation_names, get_activation

TORCH = {
    "linear": lambda x: x,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
    "hard_tanh": F.hardtanh,
    "selu": F.selu,
    "gelu": F.gelu,
    "swish": F.silu,
    "softplus": F.softplus,
}


def test_every_activation_has_a_torch_oracle():
    assert set(activation_names()) == set(TORCH)


@pytest.mark.parametrize("name", sorted(TORCH))
def test_value_and_derivative_match_autograd(name):
    # avoid the kinks at 0 and +-1, where the one-sided conventions differ by definition
    x = np.concatenate([np.linspace(-6, -1.05, 50), np.linspace(-0.95, -0.05, 50),
                        np.linspace(0.05, 0.95, 50), np.linspace(1.05, 6, 50)])
    act = get_activation(name)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = TORCH[name](xt)
    (g,) = torch.autograd.grad(yt.sum(), xt)
    np.testing.assert_allclose(act(x), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(act.grad(x), g.numpy(), rtol=1e-12, atol=1e-14)


def test_kink_conventions_follow_torch():
    x = np.array([0.0, -1.0, 1.0])
    for name in ("relu", "hard_tanh"):
        xt = torch.tensor(x, requires_grad=True, dtype=torch.float64)
        (g,) = torch.autograd.grad(TORCH[name](xt).sum(), xt)
        np.testing.assert_array_equal(get_activation(name).grad(x), g.numpy())


def test_aliases_and_params():
    assert get_activation("SiLU").name == "swish"
    assert get_activation("identity").name == "linear"
    a = get_activation("leaky_relu", alpha=0.2)
    assert a.grad(np.array([-3.0]))[0] == pytest.approx(0.2)


def test_custom_callable_needs_derivative():
    with pytest.raises(ParameterError, match="derivative"):
        get_activation(np.sin)
    act = get_activation(np.sin, derivative=np.cos)
    np.testing.assert_allclose(act.grad(np.array([0.3])), np.cos(0.3))


def test_unknown_name_error_names_parameter_and_fix():
    with pytest.raises(ParameterError) as info:
        get_activation("tahn")
    msg = str(info.value)
    assert "'activation'" in msg and "'tahn'" in msg and "tanh" in msg and "Fix:" in msg
