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


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("policy", ["warn", "skip"])
def test_reading_right_after_the_step_shows_that_step(policy):
    """The events, history and summary read right after ``optimizer.step()`` (and
    ``observe``) lagged one step: the step's iteration ended only at the next forward, so a
    NaN step warned at once but ``w.events`` was empty and ``summary()`` said "1 skipped" with
    no such step in the history. Oracle: the same run read at ``state_dict()`` (which ends the
    step), and the loop's own step count."""
    def run(read_at_once: bool):
        torch.manual_seed(0)
        m = nn.Linear(2, 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        w = watch(m, opt, on_nonfinite=policy)
        seen = []
        for s in range(3):
            x = torch.randn(3, 2)
            if s == 2:
                x[0, 0] = float("nan")
            loss = m(x).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.observe(loss)
            if read_at_once:
                seen.append(([(e.step, e.kind) for e in w.events], [h.step for h in w.history], w.summary()))
        w.state_dict()
        return w, seen

    ref, _ = run(False)
    w, seen = run(True)
    events, history, summary = seen[-1]
    assert events == [(e.step, e.kind) for e in ref.events] and any(k == "nonfinite" for _, k in events)
    assert history == [0, 1, 2]
    assert summary.startswith("3 steps watched")
    assert [h for _, h, _ in seen] == [[0], [0, 1], [0, 1, 2]]
    np.testing.assert_equal([(h.step, h.loss) for h in w.history], [(h.step, h.loss) for h in ref.history])
    w.remove()


def test_a_read_before_observe_waits_for_the_loss():
    """A loop that reads the watcher between ``optimizer.step()`` and ``observe(loss)`` must
    not end the step early (the loss would land on the next step). Oracle: the losses the
    loop computed, each at its own step."""
    torch.manual_seed(0)
    m = nn.Linear(2, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    losses = []
    with watch(m, opt) as w:
        for _ in range(4):
            loss = m(torch.randn(3, 2)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            len(w.events)
            w.observe(loss)
            losses.append(float(loss.detach()))
    assert [h.step for h in w.history] == [0, 1, 2, 3]
    assert [h.loss for h in w.history] == pytest.approx(losses, rel=1e-6)


def test_a_read_between_two_optimizers_steps_waits_for_the_second():
    """Two optimizers step one after the other: a read after the first must not end the
    iteration (the second would count as a step of its own). Oracle: the loop's step count."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    o1 = torch.optim.SGD(m[0].parameters(), lr=0.1)
    o2 = torch.optim.SGD(m[1].parameters(), lr=0.1)
    with watch(m, [o1, o2]) as w:
        for _ in range(3):
            m(torch.randn(3, 2)).pow(2).mean().backward()
            o1.step()
            len(w.history)
            o2.step()
            o1.zero_grad()
            o2.zero_grad()
    assert w.step == 3 and [h.step for h in w.history] == [0, 1, 2]


def test_steps_reach_the_store_while_training_pauses_and_survive_a_hard_exit(tmp_path):
    """Completed steps waited in memory for the next step (up to SETTLE_EVERY of them): a
    process that paused (a long evaluation, a hang) and was then killed left none of them in
    the store, and ``summary`` called the run healthy with no steps. Now an idle settler
    settles what waited SETTLE_WITHIN_S. Oracle: the steps the killed process completed (the
    step whose iteration never ended, the last, is the one in progress)."""
    run_dir = tmp_path / "run"
    code = ("import os, time, torch, gradhealth\n"
            "torch.manual_seed(0)\n"
            "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))\n"
            "opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
            f"w = gradhealth.watch(m, opt, run_dir={str(run_dir)!r})\n"
            "for _ in range(10):\n"
            "    m(torch.randn(5, 4)).pow(2).mean().backward()\n"
            "    opt.step()\n"
            "    opt.zero_grad()\n"
            "time.sleep(2.5)\n"        # the idle settler's turn, then the store's commit
            "os._exit(0)\n")           # no atexit, no remove(): as the OOM killer
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [r["step"] for r in load_run(run_dir).steps] == list(range(9))


def test_the_idle_settler_settles_in_process_and_stops_with_the_watcher(monkeypatch):
    """In process: steps that wait while the loop does something else are settled without a
    read (the raw deque, not the settling property); remove() stops the thread."""
    import threading
    import time

    monkeypatch.setattr(runlog, "SETTLE_WITHIN_S", 0.05)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    w = watch(m, opt, detail_every=never())
    for _ in range(4):
        m(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    m(torch.randn(5, 4))            # ends step 3: four completed steps wait
    deadline = time.monotonic() + 10
    while len(w._log.history) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [s.step for s in w._log.history] == [0, 1, 2, 3]
    thread = w._log._idle.thread
    assert thread in threading.enumerate()
    w.remove()
    thread.join(timeout=10)
    assert not thread.is_alive()
