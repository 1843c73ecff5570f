"""Probing leaves the model exactly as it was: parameters, buffers, grads, requires_grad,
train/eval mode of every module, and the RNG state."""

import copy

import torch
from probenets import cnn
from torch import nn

from gradhealth.probe import probe


def _snapshot(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "req": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
    }


def _assert_same(a, b):
    assert a["req"] == b["req"] and a["modes"] == b["modes"] and a["grad_ids"] == b["grad_ids"]
    for k in ("params", "buffers"):
        assert a[k].keys() == b[k].keys()
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), (k, n)
    for n in a["grads"]:
        ga, gb = a["grads"][n], b["grads"][n]
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb)), n


def test_model_is_left_exactly_as_it_was():
    model = cnn()
    model[1].eval()          # a frozen BatchNorm in eval mode inside a training model
    model[0].weight.requires_grad_(False)
    x = torch.randn(8, 3, 16, 16)
    model(x).sum().backward()  # existing gradients (and BN statistics moved once)
    model.zero_grad(set_to_none=False)
    model[4].weight.grad = None
    before = _snapshot(model)
    rng = torch.get_rng_state()
    r = probe(model, x, loss_fn="ce")
    assert r.settings["mode"] == "train"
    _assert_same(before, _snapshot(model))
    assert torch.equal(rng, torch.get_rng_state())


def test_eval_mode_and_running_stats_survive_a_train_mode_probe():
    model = cnn().eval()
    before = _snapshot(model)
    probe(model, torch.randn(8, 3, 16, 16))
    _assert_same(before, _snapshot(model))
    assert not model.training and all(not m.training for m in model.modules())


def test_global_rng_sequence_is_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    x = torch.randn(6, 4)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    probe(model, x)
    assert torch.equal(torch.rand(5), expected)


def test_probe_is_deterministic_for_a_seed():
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(16, 4)
    a, b = probe(model, x, seed=7), probe(model, x, seed=7)
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert a.jacobian.top == b.jacobian.top


def test_inputs_are_not_modified_and_not_turned_into_leaves():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(8, 4)
    x0 = x.clone()
    probe(model, x)
    assert torch.equal(x, x0) and not x.requires_grad and x.grad is None


def test_model_that_writes_into_its_input_in_place():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x.mul_(2.0)  # legal in a normal forward; illegal on a leaf that requires grad
            return self.fc(x)

    model = InPlace()
    before = copy.deepcopy(model.state_dict())
    r = probe(model, torch.randn(8, 4))
    assert any("in place" in n for n in r.notes)
    assert r.jacobian is not None and r.jacobian.wrt.startswith("output of fc")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
