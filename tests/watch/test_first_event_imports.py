"""The first event of a run must not stall the training step that raises it.

Its prescription needs the theory and SciPy's splines (``remedies._critical``): imported lazily
inside that step they took 1.5-1.8 s on a cold start (about 420 modules). A watcher now imports
them when it is created. Oracle: ``sys.modules`` in a fresh interpreter, before and after the
steps that raise and prescribe the event.
"""

import json
import subprocess
import sys

CODE = r"""
import json, sys, warnings
import torch
from torch import nn
from gradhealth import watch

torch.manual_seed(0)
layers = []
for _ in range(128):
    layers += [nn.Linear(32, 32), nn.Tanh()]
model = nn.Sequential(*layers, nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 32), torch.randn(64, 1)
warnings.simplefilter("ignore")
w = watch(model, opt)
before = set(sys.modules)
for _ in range(4):
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    w.observe(loss)
events = [(e.kind, e.remedy) for e in w.events]   # (reading them settles every step)
new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("scipy", "gradhealth"))
print(json.dumps({"events": events, "new": new}))
"""


def test_first_event_prescribes_without_importing():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    prescribed = [kind for kind, remedy in out["events"] if remedy]
    assert "vanishing" in prescribed, out["events"]
    assert out["new"] == [], f"imported during training: {out['new'][:20]}"
