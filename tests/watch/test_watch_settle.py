"""Batched settling (gradhealth.watch.runlog.RunLog.settle): completed logged steps are
assembled and run through the detectors, history and store a few at a time.

Oracle: the same seeded run settled one step at a time (``SETTLE_EVERY = 1``, the behaviour
before batching) gives the same events, in the same order, and the same store rows; a run
directory of a script that never calls ``remove()`` holds every step it ran."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth.store import load_run
from gradhealth.watch import never, runlog, watch


def _run(tmp_path, name: str, policy: str = "skip"):
    """A tanh MLP at a too-high learning rate (detector events), a NaN batch at step 9 (a guard
    event from the training thread) and a loss spike at step 30: events of both origins."""
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(8)], nn.Linear(16, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    with watch(m, opt, on_nonfinite=policy, detail_every=never(), run_dir=tmp_path / name) as w:
        for s in range(40):
            x = torch.randn(32, 16, generator=g)
            if s == 9:
                x[0, 0] = float("nan")
            y = torch.zeros(32, 1) + (50.0 if s == 30 else 0.0)
            loss = (m(x) - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.observe(loss)
    return w


def _rows(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]   # (wall clock differs)


@pytest.mark.filterwarnings("ignore")
def test_batched_settling_gives_what_one_step_at_a_time_gives(tmp_path, monkeypatch):
    batched = _run(tmp_path, "batched")
    monkeypatch.setattr(runlog, "SETTLE_EVERY", 1)
    single = _run(tmp_path, "single")
    ev_b = [(e.step, e.kind, e.layer, e.message) for e in batched.events]
    ev_s = [(e.step, e.kind, e.layer, e.message) for e in single.events]
    assert ev_b == ev_s
    kinds = {k for _, k, _, _ in ev_b}
    assert "nonfinite" in kinds and "loss_spike" in kinds     # both origins are in the comparison
    assert [s for s, *_ in ev_b] == sorted(s for s, *_ in ev_b)   # in step order
    a, b = load_run(tmp_path / "batched"), load_run(tmp_path / "single")
    assert len(a.steps) == 40 and len(a.layer_stats) > 40
    np.testing.assert_equal(_rows(a.steps), _rows(b.steps))
    np.testing.assert_equal(_rows(a.layer_stats), _rows(b.layer_stats))


@pytest.mark.filterwarnings("ignore")
def test_reading_the_watcher_settles_what_is_pending(monkeypatch):
    monkeypatch.setattr(runlog, "SETTLE_WITHIN_S", 1e9)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    w = watch(m, opt, detail_every=never())
    for _ in range(runlog.SETTLE_EVERY + 3):
        m(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    m(torch.randn(5, 4))            # the next forward ends the last step
    # (the raw deque: the first SETTLE_EVERY steps settled together, the next ones still wait)
    assert len(w._log.history) == runlog.SETTLE_EVERY
    assert [s.step for s in w.history] == list(range(runlog.SETTLE_EVERY + 3))   # reading settles
    w.remove()


def test_a_script_that_never_removes_its_watcher_stores_every_step(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import torch, gradhealth\n"
            "torch.manual_seed(0)\n"
            "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))\n"
            "opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
            f"w = gradhealth.watch(m, opt, run_dir={str(run_dir)!r})\n"
            "for _ in range(3):\n"
            "    m(torch.randn(5, 4)).pow(2).mean().backward()\n"
            "    opt.step()\n"
            "    opt.zero_grad()\n"
            "m(torch.randn(5, 4))\n")   # ends step 2; no remove(), no with-block
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [r["step"] for r in load_run(run_dir).steps] == [0, 1, 2]


def test_a_step_that_waited_long_enough_is_settled_at_the_next_step_end(monkeypatch):
    """A run that logs rarely (or has slow steps) does not hold its events back for
    SETTLE_EVERY logged steps: at each step's end, a waiting step older than SETTLE_WITHIN_S
    is settled."""
    monkeypatch.setattr(runlog, "SETTLE_EVERY", 1000)
    monkeypatch.setattr(runlog, "SETTLE_WITHIN_S", 1.5)
    clock = iter(range(10**6))                         # a clock one second ahead at every look
    monkeypatch.setattr(runlog, "_now", lambda: float(next(clock)))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with watch(m, opt, every=3, detail_every=never()) as w:
        seen = []
        for _ in range(7):
            m(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            seen.append(len(w._log.history))   # raw: what has been settled, without reading
    # logged steps 0, 3, 6: each completes at the next forward, is 1 s old when complete()
    # looks (not due) and 2 s old at that step's end (due): settled then, although far fewer
    # than SETTLE_EVERY are waiting
    assert seen == [0, 1, 1, 1, 2, 2, 2]
