"""gradhealth.theory is framework-free: it imports and computes with torch made unavailable."""

import json
import subprocess
import sys

CODE = r"""
import sys
sys.modules["torch"] = None          # any 'import torch' now raises ImportError
import json
import gradhealth.theory as theory
from gradhealth.theory.meanfield import analyze
from gradhealth.theory.criticality import critical_sigma_w2, phase_diagram
r = analyze("tanh", 1.5, 0.05)
pd = phase_diagram("relu", [1.0, 3.0], [0.0, 0.1])
print(json.dumps({"chi_1": r.chi_1, "crit": critical_sigma_w2("tanh", 0.05),
                  "torch_loaded": any(m == "torch" or m.startswith("torch.")
                                      for m, v in sys.modules.items() if v is not None)}))
"""


def test_theory_imports_and_runs_without_torch():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.9 < out["chi_1"] < 1.0 and 1.7 < out["crit"] < 1.8
    assert out["torch_loaded"] is False
