"""A NaN from the forward on a step the GradScaler skips (issue 12/13). The scaler skips a step
when the scaled gradients overflow, which is how it calibrates itself and leaves the loss
finite; a NaN made by a layer makes the loss NaN too. That step used to give no event at all;
now it is a nonfinite event, and the forensic replay (run when the next forward shows that the
scaler skipped) names the layer. Oracle: where the NaN was planted."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradhealth.watch import watch


def _run(plant, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with watch(model, opt, scaler=scaler) as w:
            for i in range(6):
                x = torch.randn(8, 6)
                if i == 3:
                    plant(model, x)
                with torch.autocast("cpu", dtype=dtype):
                    loss = model(x).float().pow(2).mean()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
                w.observe(loss)
    return w


def _nan_weight(model, x):
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")


def _nan_input(model, x):
    x[0, 0] = float("nan")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_nan_weight_is_named_on_a_scaler_skipped_step(dtype):
    w = _run(_nan_weight, dtype)
    assert (3, "scaler") in [(s.step, s.skip_reason) for s in w.history]
    ev = next(e for e in w.events if e.kind == "nonfinite")
    assert ev.step == 3 and ev.layer == "2", (ev.step, ev.layer, ev.message)
    assert w.replays[0].module == "2" and w.replays[0].step == 3


def test_a_nan_input_is_named_as_the_input():
    w = _run(_nan_input, torch.bfloat16)
    ev = next(e for e in w.events if e.kind == "nonfinite")
    assert ev.step == 3 and w.replays[0].direction == "input"
    # the scaler skipped only that step: the next ones are finite again and not skipped
    assert [s.step for s in w.history if s.skipped] == [3]
