import json
import subprocess
import sys

from gradhealth.cli import main


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    import torch

    assert info["torch"] == torch.__version__ and info["gradhealth"]


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "gradhealth", "no-such-command"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_closed_pipe_is_not_a_traceback():
    # `gradhealth power --json | head -1`: the reader goes away after one line.
    proc = subprocess.Popen([sys.executable, "-m", "gradhealth", "power", "--weight", "0.6",
                             "--depth", "3000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err


_MODEL = """
import torch
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)), torch.randn(16, 4)
"""


def test_blank_and_directory_paths_are_usage_errors(tmp_path, capsys, monkeypatch):
    """A blank option was taken as "not given" (``--plot ''``, ``cure --save ''``,
    ``run --run-dir ''`` silently used the default), ``probe --plot DIR`` quietly wrote
    ``DIR.png`` and ``--device ''`` was accepted. Oracle: the exit code, the option named, and
    the folder left as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(_MODEL)
    (tmp_path / "adir").mkdir()
    (tmp_path / "train.py").write_text("print('hi')\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [(["probe", "m.py:make", "--plot", "adir"], "plot"), (["probe", "m.py:make", "--plot", ""], "plot"),
             (["probe", "m.py:make", "--device", ""], "device"), (["cure", "m.py:make", "--save", ""], "save"),
             (["cure", "m.py:make", "--save", "adir"], "save"), (["run", "--run-dir", "", "train.py"], "run-dir")]
    for argv, param in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"'{param}' parameter" in err and "Fix:" in err and "Traceback" not in err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == before
