"""Checked by mypy in CI ([tool.mypy] files): the public entry points type-check as the docs
call them. tests/typing/test_signatures.py runs mypy on misspelled options and expects errors."""

from __future__ import annotations

import torch
from torch import nn

from gradhealth.probe import probe
from gradhealth.watch import watch


def documented_calls() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run_dir="runs/exp1", on_nonfinite="skip", every=10,
               rollback_storage="memory") as w:
        w.observe(torch.tensor(1.0))
    probe(model, torch.randn(8, 4), mode="eval", jacobian=False)
