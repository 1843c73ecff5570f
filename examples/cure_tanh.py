"""Cure a chaotic deep tanh MLP in one line, and show that it then trains.

Run it:          python examples/cure_tanh.py
From the CLI:    gradhealth cure examples/cure_tanh.py:make_model --save cured.pt

A 40-layer tanh MLP with weights N(0, 4 / fan_in) is in the chaotic phase: each layer
multiplies the backward signal by about 1.17, so the first layer's gradient is hundreds of
times the last one's. The probe prescribes ``gradhealth.remedies.critical_`` (the edge of
chaos, sigma_w2 = 1 for tanh); ``apply_prescription`` applies that line to a copy; the copy
probes healthy and, trained for 60 SGD steps on scikit-learn's digits, reaches a far lower
loss than the original.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradhealth.remedies as remedies

SMOKE = os.environ.get("GRADHEALTH_SMOKE") == "1"  # the test suite runs a smaller version


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(y)


def make_model(depth: int = 40, width: int = 64):
    """The broken model and a batch of digits (the factory `gradhealth cure` calls)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    remedies.gaussian_(model, sigma_w2=4.0)  # deep in the chaotic phase
    return model, digits()[0][:128]


def train(model: nn.Module, steps: int) -> float:
    x, y = digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def main() -> int:
    from gradhealth.probe import probe

    torch.set_num_threads(1)
    model, batch = make_model()
    before = probe(model, batch, jacobian=False)
    if before.healthy:
        print("the model probes healthy: nothing to cure")
        return 1
    top = before.prescriptions[0]
    print(f"verdict: {before.verdict}\nprescription: {top.code}\n  why: {top.reason}\n")

    cured = copy.deepcopy(model)
    torch.manual_seed(0)
    (summary,) = remedies.apply_prescription(top, cured)  # the one line, parsed and applied
    print(summary, "\n")
    after = probe(cured, batch, jacobian=False)
    print(f"verdict after: {after.verdict}")

    steps = 20 if SMOKE else 60
    loss_before, loss_after = train(model, steps), train(cured, steps)
    print(f"digits cross-entropy after {steps} SGD steps: broken {loss_before:.3f}, cured {loss_after:.3f}")
    return 0 if (after.healthy and loss_after < loss_before) else 1


if __name__ == "__main__":
    sys.exit(main())
