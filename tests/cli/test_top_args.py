"""``gradhealth top`` checks its arguments and its store as the other subcommands do.

Oracles: for --interval, the check of ``gradhealth export --follow --interval`` (the same value
must be refused by both); for the store, ``gradhealth summary`` (top must refuse exactly the
stores summary refuses, with summary's reason). Subprocesses with a timeout: before the fix
some of these never returned.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from tiny_runs import finished_run

from gradhealth.errors import ParameterError

GRADHEALTH = [sys.executable, "-m", "gradhealth"]


def _gh(*args, timeout=60):
    env = dict(os.environ, COLUMNS="100")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([*GRADHEALTH, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("top_args") / "run")


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "-inf"])
def test_interval_refused_like_export(finished, tmp_path, value):
    from gradhealth.cli import export as export_cli

    with pytest.raises(ParameterError):  # the oracle: export --follow --interval refuses it
        export_cli._follow(None, finished, tmp_path / "tb", float(value))
    out = _gh("top", finished, f"--interval={value}")
    assert out.returncode == 2, out.stdout
    assert "'interval' parameter of gradhealth top" in out.stderr and "Fix:" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_wait_must_be_finite_and_not_negative(finished, value):
    out = _gh("top", finished, f"--wait={value}")
    assert out.returncode == 2, out.stdout
    assert "'wait' parameter of gradhealth top" in out.stderr and "Fix:" in out.stderr


def test_wait_nan_on_a_missing_run_returns(tmp_path):
    # before: `elapsed > nan` is never true, so it waited forever
    out = _gh("top", tmp_path / "never", "--wait", "nan", "--interval", "0.1", timeout=30)
    assert out.returncode == 2 and "'wait'" in out.stderr


def test_wait_runs_out_with_a_clear_message(tmp_path):
    out = _gh("top", tmp_path / "never", "--wait", "0.2", "--interval", "0.05", timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith("gradhealth top: error: no run store appeared") and "--wait" in out.stderr


def test_good_arguments_still_show_the_run(finished):
    out = _gh("top", finished, "--interval", "0.5", "--wait", "0")
    assert out.returncode == 0, out.stderr
    assert "[finished]" in out.stdout and "step 3" in out.stdout and out.stdout.endswith("\n")


def _bad_stores(src, root):
    """Stores summary refuses: tables missing, a newer schema, a file, an empty SQLite file."""
    stores = {}
    for label, sql in [("no events", "DROP TABLE events"), ("no layer_stats", "DROP TABLE layer_stats"),
                       ("newer schema", "PRAGMA user_version = 99"), ("version 0", "PRAGMA user_version = 0")]:
        d = root / label.replace(" ", "_")
        shutil.copytree(src, d)
        conn = sqlite3.connect(d / "run.sqlite")
        conn.execute(sql)
        conn.commit()
        conn.close()
        stores[label] = d
    stores["a file"] = root / "afile.txt"
    stores["a file"].write_text("not a run\n")
    (root / "empty").mkdir()
    sqlite3.connect(root / "empty" / "run.sqlite").close()
    stores["empty sqlite"] = root / "empty"
    return stores


@pytest.fixture(scope="module")
def bad_stores(finished, tmp_path_factory):
    return _bad_stores(finished, tmp_path_factory.mktemp("bad_stores"))


@pytest.mark.parametrize("label", ["no events", "no layer_stats", "newer schema", "version 0", "a file",
                                   "empty sqlite"])
@pytest.mark.parametrize("once", [True, False])
def test_top_refuses_what_summary_refuses(bad_stores, label, once):
    store = bad_stores[label]
    oracle = _gh("summary", store)
    assert oracle.returncode == 2 and oracle.stderr.startswith("gradhealth summary: error: ")
    reason = oracle.stderr[len("gradhealth summary: error: "):]
    out = _gh("top", store, *(["--once"] if once else ["--interval", "0.05"]), timeout=30)
    assert out.returncode == 2, (label, out.stdout)
    assert out.stderr == f"gradhealth top: error: {reason}", label
    assert "Traceback" not in out.stderr


def test_a_good_store_is_read_again_after_it_was_accepted(finished):
    from gradhealth.cli import top

    first = top.read_snapshot(finished)
    second = top.read_snapshot(finished)  # the reader's verdict is kept for this file
    assert first.state == second.state == "ok" and second.step["step"] == 3
    assert math.isclose(second.layers[0][1], 1.0)
