"""Entry points and bad input of the CLI (issue 10): targets resolved like `python -m`, a
documented cap on every size, a subcommand's own usage, the user's file:line when the user's
code raises, no-CUDA builds, unusable --run-dir. Exit 2 with a message, never a traceback."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gradhealth
from gradhealth.cli import main

GRADHEALTH_SRC = str(Path(gradhealth.__file__).parent)
CONSOLE_SCRIPT = Path(sys.executable).with_name("gradhealth")

MODELS = """\
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def helper(d):
    return d["missing"]          # the last frame in user code


def broken():
    return helper({})


def torch_fails():
    return nn.Linear(-3, 2)      # raises inside torch
"""


@pytest.fixture()
def pkg(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(MODELS)
    return tmp_path


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


# ----------------------------------------------------------------------- 1. pkg.module:FACTORY

@pytest.mark.parametrize("command", ["probe", "cure"])
def test_package_module_factory_resolves_from_the_current_directory(pkg, command):
    # the console script, as a user runs it: its sys.path[0] is the venv's bin/, not the cwd
    assert CONSOLE_SCRIPT.exists()
    proc = subprocess.run([str(CONSOLE_SCRIPT), command, "mypkg.models:build", "--input-shape", "16,4",
                           "--json"], cwd=pkg, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    assert '"verdict"' in proc.stdout
    assert "not found" not in proc.stderr


def test_package_module_factory_does_not_leave_the_cwd_on_sys_path(pkg, monkeypatch, capsys):
    monkeypatch.chdir(pkg)
    before = sys.path[:]
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg.models", raising=False)
    try:
        assert main(["probe", "mypkg.models:build", "--input-shape", "16,4", "--json"]) in (0, 1)
        assert sys.path == before
    finally:  # this tmp_path's mypkg must not shadow another test's
        for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
            del sys.modules[name]


# ----------------------------------------------------------------------- 2. caps on sizes

@pytest.mark.parametrize("argv,param,cap", [
    (["chain", "--depth", "1000000000"], "depth", "10000"),
    (["chain", "--points", "1000000000"], "points", "1000000"),
    (["chain", "--depth", "5000", "--points", "100000"], "depth", "10000000"),
    (["power", "--depth", "100000000"], "depth", "10000000"),
    (["phase", "--grid", "100000"], "grid", "1000"),
    (["top", "no-such-run", "--once", "--events", "100000000"], "events", "1000"),
    (["top", "no-such-run", "--once", "--events", "-1"], "events", "1000"),
    (["probe", "mypkg/models.py:build", "--input-shape", "100000,100000,100"], "input-shape", "100000000"),
    (["cure", "mypkg/models.py:build", "--input-shape", "100000,100000,100"], "input-shape", "100000000"),
])
def test_every_size_has_a_cap_checked_first(pkg, monkeypatch, capsys, argv, param, cap):
    monkeypatch.chdir(pkg)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"The {param!r} parameter" in err and "Traceback" not in err
    m = re.search(r"Fix: (.*)", err)
    assert m, err
    fix = m.group(1)
    # the fix agrees with the rule: it does not tell the user to go larger past a maximum
    assert "or larger" not in fix, err
    assert cap in err.replace(",", "").replace("_", ""), err


def test_caps_are_documented():
    docs = Path(__file__).resolve().parents[2] / "docs"
    chains = (docs / "explain-chains.md").read_text()
    assert "10,000 layers" in chains and "1,000,000" in chains and "10,000,000" in chains
    probe_doc = (docs / "probe.md").read_text()
    assert "100,000,000" in probe_doc


def test_the_largest_allowed_chain_still_runs(capsys):
    assert main(["chain", "--depth", "10000", "--points", "1000"]) == 0
    assert "10000" in capsys.readouterr().out


# ----------------------------------------------------------------------- 3. the subcommand's usage

@pytest.mark.parametrize("argv,command", [
    (["chain", "--bogus"], "chain"),
    (["power", "--depth", "3", "extra"], "power"),
    (["probe", "x.py:f", "--no-such-flag"], "probe"),
    (["meanfield", "--sigma-w2", "abc"], "meanfield"),
])
def test_usage_error_prints_the_subcommands_usage(capsys, argv, command):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: gradhealth {command} " in err, err
    assert f"Try 'gradhealth {command} --help'" in err
    assert "usage: gradhealth [-h]" not in err


# ----------------------------------------------------------------------- 4. the user's file:line

@pytest.mark.parametrize("command", ["probe", "cure"])
@pytest.mark.parametrize("factory,code,text", [
    ("broken", 'return d["missing"]', "KeyError: 'missing'"),
    ("torch_fails", "return nn.Linear(-3, 2)", "RuntimeError"),
])
def test_factory_error_shows_the_users_file_and_line(pkg, monkeypatch, capsys, command, factory, code, text):
    line = next(i for i, t in enumerate(MODELS.splitlines(), 1) if code in t)
    monkeypatch.chdir(pkg)
    assert main([command, f"mypkg/models.py:{factory}", "--input-shape", "16,4"]) == 2
    err = capsys.readouterr().err
    assert f"models.py:{line}" in err, err
    assert text in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_module_import_error_shows_the_users_file_and_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "boom.py").write_text("import torch\n\nx = 1\nraise ValueError('at import')\n")
    (tmp_path / "syntax.py").write_text("def f(:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    assert main(["probe", "boom.py:f", "--input-shape", "2,2"]) == 2
    err = capsys.readouterr().err
    assert "boom.py:4" in err and "ValueError: at import" in err and "Traceback" not in err
    assert main(["probe", "syntax.py:f", "--input-shape", "2,2"]) == 2
    err = capsys.readouterr().err
    assert "syntax.py:1" in err and "SyntaxError" in err and "Traceback" not in err


def test_script_error_under_run_names_the_users_line_and_no_gradhealth_frame(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import torch, torch.nn as nn
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 1:
                {}["nope"]
        """))
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--no-live", str(script)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{script}:10" in err, err
    assert GRADHEALTH_SRC not in err, err


def test_script_stopped_by_on_nonfinite_raise_shows_no_gradhealth_frame(tmp_path, capsys):
    script = tmp_path / "nan.py"
    script.write_text(textwrap.dedent("""\
        import torch, torch.nn as nn
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean() * (float("inf") if step == 1 else 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        """))
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--no-live", "--on-nonfinite", "raise",
                 str(script)])
    err = capsys.readouterr().err
    assert code == 1
    assert "NonFiniteError" in err
    assert re.search(rf"{re.escape(str(script))}:[78]\b", err), err
    assert GRADHEALTH_SRC not in err, err


# ----------------------------------------------------------------------- 5. --device on a CPU build

@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA")
def test_device_cuda_on_a_cpu_build(pkg, monkeypatch, capsys):
    monkeypatch.chdir(pkg)
    assert main(["probe", "mypkg/models.py:build", "--input-shape", "16,4", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "'device'" in err and "Traceback" not in err and "AssertionError" not in err
    if torch.version.cuda is None:
        assert "this torch build has no CUDA; use --device cpu" in err, err


def test_device_that_torch_cannot_parse(pkg, monkeypatch, capsys):
    monkeypatch.chdir(pkg)
    assert main(["probe", "mypkg/models.py:build", "--input-shape", "16,4", "--device", "banana"]) == 2
    err = capsys.readouterr().err
    assert "'device'" in err and "banana" in err and "Traceback" not in err


# ----------------------------------------------------------------------- 6. --run-dir

MARKER_SCRIPT = "open({marker!r}, 'w').write('ran')\n"


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_unusable_run_dir_is_refused_before_the_script_runs(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    run_dir = blocker if where == "file" else blocker / "sub" / "run"
    marker = tmp_path / "ran"
    script = tmp_path / "train.py"
    script.write_text(MARKER_SCRIPT.format(marker=str(marker)))
    code = main(["run", "--run-dir", str(run_dir), "--no-live", str(script)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not marker.exists()
    assert "run-dir" in err and "Traceback" not in err
