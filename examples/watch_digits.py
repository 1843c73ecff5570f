"""Train a small MLP on scikit-learn's digits under ``gradhealth.watch``.

Three runs of 120 SGD steps (learning rate 0.02) on the 8x8 digit images (they ship inside
scikit-learn; nothing is downloaded; about 5 s on a CPU):

1. a deep sigmoid MLP with PyTorch's default initialisation: the watcher reports vanishing
   gradients at step 0 (the backward signal shrinks ~4-7x per layer) and names the first
   layer, with a prescription;
2. the same depth with ReLU and He initialisation: no alarm;
3. the healthy net again, with a NaN planted in the input of one step and
   ``on_nonfinite="skip"``: the step is skipped (parameters and optimizer state untouched),
   forensic replay says the batch itself was non-finite, and training carries on.

Every run is written to ``runs/watch_digits/<name>`` and read back with
``gradhealth.store.load_run``. Run it with ``python examples/watch_digits.py``.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from gradhealth.store import load_run
from gradhealth.watch import WatchWarning, watch

STEPS = 120   # (cheap: the tests run it as written, no shortened smoke mode)
OUT = Path("runs/watch_digits")


def data():
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.asarray(y), dtype=torch.long)


def make_mlp(broken: bool, depth: int = 8, width: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    act = nn.Sigmoid if broken else nn.ReLU
    layers, d = [], 64
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, 10))
    model = nn.Sequential(*layers)
    if not broken:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return model


def train(name: str, model: nn.Module, x, y, *, nan_at: int | None = None, **watch_kw):
    # (at lr 0.05 the healthy net's loss jumps 5x for 4 steps near step 100: a real spike, reported)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    run_dir = OUT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    with watch(model, opt, run_dir=run_dir, **watch_kw) as watcher:
        for step in range(STEPS):
            idx = torch.randint(0, len(x), (64,), generator=g)
            xb = x[idx].clone()
            if step == nan_at:
                xb[5, 7] = math.nan            # a corrupted example
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            watcher.observe(loss)
    return watcher, load_run(run_dir)


def report(name: str, watcher, run) -> None:
    steps, losses = run.step_series("loss")
    first, last = losses[0], losses[np.isfinite(losses)][-1]
    print(f"\n== {name}: {len(run.steps)} steps stored, loss {first:.3f} -> {last:.3f}, "
          f"{len(run.events)} events")
    for e in watcher.events:
        where = f" [{e.layer}]" if e.layer else ""
        print(f"  step {e.step} {e.kind}{where}: {e.message}")
        if e.remedy:
            print(f"    remedy: {e.remedy}")


def main() -> None:
    x, y = data()
    w, run = train("sigmoid_default_init", make_mlp(broken=True), x, y)
    report("deep sigmoid, default init", w, run)
    assert any(e.kind == "vanishing" and e.step == 0 for e in w.events)

    w, run = train("relu_he_init", make_mlp(broken=False), x, y)
    report("deep ReLU, He init", w, run)
    assert w.events == []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        w, run = train("relu_he_init_nan_batch", make_mlp(broken=False), x, y, nan_at=10,
                       on_nonfinite="skip")
    report("deep ReLU with a NaN in the batch of step 10, on_nonfinite='skip'", w, run)
    skipped = [s["step"] for s in run.steps if s["skipped"]]
    print(f"  skipped steps: {skipped}; replay: {w.replays[0].summary}")
    assert skipped == [10] and w.replays[0].direction == "input"


if __name__ == "__main__":
    main()
