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
