"""``gradhealth top``: a live view of a run that another process is still writing.

Under tmux (send-keys / capture-pane) when tmux is installed; the ``--once`` subprocess tests
run everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

GRADHEALTH = [sys.executable, "-m", "gradhealth"]

WRITER = textwrap.dedent("""
    import sys, time
    from gradhealth.events import Event
    from gradhealth.store import RunStore
    run_dir, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    time.sleep(pause)  # the viewer starts before the store exists
    store = RunStore(run_dir, flush_every=0.05)
    store.write_layers([{"index": i, "name": f"block{i}", "type": "Linear", "n_params": 4}
                        for i in range(6)])
    for s in range(n):
        bad = s == 5
        store.append_steps([{"step": s, "loss": float("nan") if bad else 1.0 / (s + 1),
                             "global_grad_norm": 0.5, "skipped": int(bad)}])
        store.append_layer_stats([{"step": s, "layer": i,
                                   "grad_norm": float("nan") if bad and i == 3 else 10.0 ** -i}
                                  for i in range(6)])
        if bad:
            store.append_events([Event(step=s, kind="nonfinite", layer="block3", severity="error",
                                       message="NaN in \\x1b[31mblock3")])
        store.flush()
        time.sleep(pause)
    store.close()
""")


def _env():
    env = dict(os.environ, COLUMNS="200")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_once_renders_a_frame_of_a_finished_run(poisoned_run_dir):
    out = subprocess.run([*GRADHEALTH, "top", str(poisoned_run_dir), "--once"], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[finished]" in out.stdout and "step 24" in out.stdout
    assert "nonfinite" in out.stdout and "\x1b" not in out.stdout  # ANSI layer name made visible


def test_once_on_a_missing_store_says_it_waits(tmp_path):
    out = subprocess.run([*GRADHEALTH, "top", str(tmp_path / "not_yet"), "--once"], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert out.returncode == 2 and "waiting for the run store" in out.stdout
    assert "Traceback" not in out.stderr


def test_strip_marks_nan_inf_zero():
    from gradhealth.cli.top import strip

    s = strip([1e-3, float("nan"), 1.0, None, float("inf"), 0.0], width=80)
    assert s[1] == "N" and s[3] == "·" and s[4] == "I" and s[5] == "0" and s[0] != s[2]
    assert "N" in strip([1.0] * 500 + [float("nan")] + [1.0] * 499, width=50)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="the live-view test needs tmux (apt-get install -y tmux)")
def test_live_view_under_tmux_follows_a_writing_run_and_exits_when_it_closes(tmp_path):
    run_dir = tmp_path / "live"
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    session = f"ghtop-{uuid.uuid4().hex[:8]}"
    env = _env()
    cmd = (f"{sys.executable} -m gradhealth top {run_dir} --interval 0.2; "
           f"echo TOP-EXIT=$?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30",
                    "-e", f"PYTHONPATH={env['PYTHONPATH']}", cmd], check=True, env=env)
    proc = None
    try:
        def pane():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        def wait_for(text, timeout=60):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                p = pane()
                if text in p:
                    return p
                time.sleep(0.2)
            raise AssertionError(f"{text!r} never appeared; pane:\n{pane()}")

        wait_for("waiting for the run store")
        proc = subprocess.Popen([sys.executable, str(writer), str(run_dir), "12", "0.6"], env=env)
        p = wait_for("[running]")
        p = wait_for("nonfinite")
        assert proc.poll() is None, "the writer should still be writing"
        assert "block3" in p and "\\x1b[31m" in p
        assert "N" in p.split("layers (6")[1].splitlines()[0]
        p = wait_for("TOP-EXIT=0", timeout=90)
        assert "[finished]" in p and "step 11" in p
        proc.wait(timeout=30)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        if proc is not None and proc.poll() is None:
            proc.kill()
