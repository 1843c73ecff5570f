"""Probe a deep tanh MLP before training it, apply the top prescription, probe again.

Run it:          python examples/probe_mlp.py
From the CLI:    gradhealth probe examples/probe_mlp.py:make_model --plot probe.png

A 50-layer tanh MLP initialised with sigma_w2 = 4 (weights N(0, 4 / fan_in)) is in the chaotic
phase of mean-field theory: every layer multiplies the backward signal by about
sqrt(chi_1) = 1.17 (chi_1 = 1.36), so the first layer's backward signal is hundreds of times
the last one's. The probe
says so, with the layer, the measured chi_1 next to the theory's, and a prescription; the
script applies it (gradhealth.remedies.critical_) and probes again.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

SMOKE = os.environ.get("GRADHEALTH_SMOKE") == "1"  # the test suite runs a smaller version


def make_model(depth: int = 50, width: int = 64, sigma_w2: float = 4.0, batch: int = 64):
    """A deep tanh MLP with N(0, sigma_w2 / fan_in) weights, and a batch of 8x8 'images'."""
    gen = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(depth - 1):
        lin = nn.Linear(fan_in, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * (sigma_w2 / fan_in) ** 0.5)
            lin.bias.zero_()
        layers += [lin, nn.Tanh()]
        fan_in = width
    head = nn.Linear(width, 10)
    with torch.no_grad():  # from the seeded generator too, so every run probes the same model
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * (1.0 / width) ** 0.5)
        head.bias.zero_()
    layers.append(head)
    model = nn.Sequential(*layers)
    inputs = torch.randn(batch, 64, generator=gen)
    return model, inputs


def main() -> int:
    from gradhealth.probe import probe

    model, x = make_model(batch=32 if SMOKE else 64)
    before = probe(model, x)
    print(before)
    if before.prescriptions:
        print("\nTop prescription:", before.prescriptions[0].code)
    try:
        from gradhealth.remedies import critical_
    except ImportError:  # the cure pillar ships with gradhealth; this is only a fallback
        critical_ = None
    if critical_ is not None:
        critical_(model, activation="tanh", sigma_b2=0.0)
    else:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, m.in_features ** -0.5)
                nn.init.zeros_(m.bias)
    after = probe(model, x)
    print("\nAfter re-initialising at the edge of chaos:\n")
    print(after)
    if "--plot" in sys.argv:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        before.plot(ax=a)
        after.plot(ax=b)
        fig.savefig("probe_mlp.png", dpi=110, bbox_inches="tight")
        print("wrote probe_mlp.png")
    return 0 if (before.verdict == "exploding" and after.healthy) else 1


if __name__ == "__main__":
    sys.exit(main())
