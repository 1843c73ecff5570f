"""`gradhealth run` under torchrun (issue 12): 2 gloo ranks from a real
``python -m torch.distributed.run --standalone --nproc_per_node=2 -m gradhealth run ...``,
bounded by a timeout (and the script's process group by its own).

Oracles: the script's own data (rank 1's batch holds a NaN at step 5: both ranks must skip
exactly that step, as the guard's all-reduced decision requires), each rank's store read back
independently, and `gradhealth summary`'s exit code for the gating the run leaves to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

from gradhealth.cli import main
from gradhealth.store import load_run

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")

SCRIPT = textwrap.dedent("""
    import datetime, torch, torch.nn as nn, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1 + rank)
    for step in range(12):
        x = torch.randn(16, 8, generator=g)
        if step == 5 and rank == 1:
            x[0, 0] = float("nan")
        loss = model(x).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    dist.destroy_process_group()
""")


def test_gradhealth_run_under_torchrun(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gradhealth", "run", "--no-live", "--run-dir", str(tmp_path / "run"),
           "--on-nonfinite", "skip", str(script)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out                     # the script's code, despite the pathology
    assert out.count("gradhealth: watching") == 1, out   # rank 0 prints, rank 1 does not
    assert "under torchrun" in out and "gradhealth summary" in out
    r0, r1 = load_run(tmp_path / "run"), load_run(tmp_path / "run" / "rank1")
    assert r0.meta.get("rank") == 0 and r1.meta.get("rank") == 1 and r0.meta.get("world_size") == 2
    for r in (r0, r1):
        assert r.finished
        assert [s["step"] for s in r.steps if s.get("skipped")] == [5]
    assert [s["step"] for s in r0.steps] == [s["step"] for s in r1.steps] == list(range(12))
    # gating is left to the summary, which exits 1 on the pathology
    assert main(["summary", str(tmp_path / "run")]) == 1


NAN_SCRIPT = textwrap.dedent("""
    import torch, torch.nn as nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(6):
        x = torch.randn(8, 4)
        if step == 3:
            x[0, 0] = float("nan")
        loss = model(x).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
""")


@pytest.mark.parametrize("rank, flag, code, prints", [
    ("1", [], 0, False), ("0", [], 0, True), ("0", ["--fail-on-pathology"], 1, True),
    ("1", ["--fail-on-pathology"], 1, False)])
def test_rank_environment_decides_output_and_exit_code(tmp_path, capsys, monkeypatch, rank, flag, code, prints):
    """The torchrun environment alone (no process group): rank 0 prints, the others are quiet;
    the pathology exit code is off by default under WORLD_SIZE > 1, on with --fail-on-pathology;
    outside torchrun (the other tests of gradhealth run) it is on."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    got = main(["run", "--no-live", *flag, "--run-dir", str(tmp_path / "run"), str(script)])
    cap = capsys.readouterr()
    assert got == code
    assert ("first problem" in cap.err + cap.out) is prints, cap
    assert Path(tmp_path / "run").exists()


def test_a_hostile_run_dir_is_printed_escaped(tmp_path, capsys, monkeypatch):
    """The run directory is the user's string: the 'details' line and the torchrun note show
    its control characters as escapes (they were printed raw)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    run_dir = tmp_path / "run\x1b[2Jx"
    assert main(["run", "--no-live", "--run-dir", str(run_dir), str(script)]) == 0
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert "gradhealth summary" in out and "details: gradhealth events" in out
    assert "\x1b" not in out
