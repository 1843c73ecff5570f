"""No verdict without evidence (issue 10): a probe that measured no gradient says so, never HEALTHY.

Oracle: autograd itself. For each model below, ``torch.autograd.grad`` of the model's output
with respect to its trainable parameters shows that no parameter takes part (or that there is
no parameter gradient to take, or no example), so any verdict would be a guess.
"""

import pytest
import torch
from torch import nn

from gradhealth.cli import main
from gradhealth.errors import ModelError, ParameterError
from gradhealth.probe import probe


class Bypass(nn.Module):
    """Runs its layer, then returns something that does not depend on it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        self.lin(x)
        return 2 * x


class Unused(nn.Module):
    """Owns a layer it never calls."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return 2 * x


def _frozen():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _param_grads(model, x):
    """The oracle: which trainable parameters the output depends on, by autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or x.shape[0] == 0:
        return []
    y = model(x)
    if not y.requires_grad:
        return []
    gs = torch.autograd.grad(y.sum(), params, allow_unused=True)
    return [g for g in gs if g is not None]


CASES = {
    "empty batch": (lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (0, 8)),
    "output bypasses the layer": (Bypass, (4, 8)),
    "layer never called": (Unused, (4, 8)),
    "all layers frozen": (_frozen, (4, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_measured_gradient_is_an_error_not_healthy(case):
    make, shape = CASES[case]
    torch.manual_seed(0)
    model, x = make(), torch.randn(shape)
    assert _param_grads(model, x) == []  # the oracle: nothing to measure
    with pytest.raises((ModelError, ParameterError)) as err:
        probe(model, x)
    assert "Fix:" in str(err.value) or "fix" in str(err.value).lower()


FACTORIES = '''
import torch
from torch import nn

def empty():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(0, 8)

def frozen():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    net.requires_grad_(False)
    return net, torch.randn(4, 8)

class Bypass(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        self.lin(x)
        return 2 * x

def bypass():
    return Bypass(), torch.randn(4, 8)
'''


@pytest.mark.parametrize("factory", ["empty", "frozen", "bypass"])
def test_cli_exits_2_without_evidence(tmp_path, capsys, factory):
    p = tmp_path / "noev.py"
    p.write_text(FACTORIES)
    assert main(["probe", f"{p}:{factory}", "--no-jacobian"]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "HEALTHY" not in text and "Traceback" not in text
    assert "Fix" in text


def test_partly_frozen_model_still_gets_a_verdict():
    """The error is for *no* evidence only: a frozen backbone with a trainable head is probed."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    net[0].requires_grad_(False)
    r = probe(net, torch.randn(16, 8))
    assert r.verdict == "healthy" and r.layer("2").grad_norm is not None
