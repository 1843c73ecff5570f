"""``gradhealth probe``: exit codes 0 healthy / 1 pathology / 2 usage error, with clear messages."""

import json
from pathlib import Path

import pytest
import torch

from gradhealth.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "probe_mlp.py")

FACTORIES = '''
import torch
from torch import nn

def healthy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    return net, torch.randn(16, 8)

def model_only():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

def nan_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.fill_(float("nan"))
    return net, torch.randn(3, 4)

def raises():
    raise RuntimeError("cannot build")

def not_a_model():
    return 42
'''


@pytest.fixture()
def factories(tmp_path):
    p = tmp_path / "facts.py"
    p.write_text(FACTORIES)
    return p


def test_healthy_exits_0_and_prints_the_table(factories, capsys):
    assert main(["probe", f"{factories}:healthy"]) == 0
    out = capsys.readouterr().out
    assert "HEALTHY" in out and "layers (forward order)" in out


def test_broken_exits_1_with_json(capsys):
    assert main(["probe", f"{EXAMPLE}:make_model", "--json", "--no-jacobian"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] == "exploding" and d["worst_layer"] == "0"
    assert d["prescriptions"][0]["code"].startswith("gradhealth.remedies.")


def test_input_shape_inputs_file_loss_and_plot(factories, tmp_path, capsys):
    assert main(["probe", f"{factories}:model_only", "--input-shape", "12,8", "--loss", "mse",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"]["kind"] == "mse"
    batch = tmp_path / "batch.pt"
    torch.save({"inputs": torch.randn(12, 8), "target": torch.randint(0, 3, (12,))}, batch)
    png = tmp_path / "flow.png"
    assert main(["probe", f"{factories}:model_only", "--inputs", str(batch), "--loss", "ce",
                 "--plot", str(png), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["loss"]["kind"] == "ce" and "random" not in d["loss"]["description"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    plain = tmp_path / "x.pt"
    torch.save(torch.randn(5, 8), plain)
    assert main(["probe", f"{factories}:model_only", "--inputs", str(plain), "--layers", "2"]) == 0


def test_module_path_factory(factories, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(factories.parent))
    assert main(["probe", "facts:healthy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "healthy"


@pytest.mark.parametrize("argv,needle", [
    (["probe", "missing.py:make"], "no file 'missing.py'"),
    (["probe", "no_such_pkg_xyz.mod:make"], "module 'no_such_pkg_xyz' was not found"),
    (["probe", "nocolon"], "PATH_OR_MODULE:FACTORY"),
    (["probe", "{f}:nope"], "callables defined in it: healthy, model_only"),
    (["probe", "{f}:raises"], "raised RuntimeError: cannot build"),
    (["probe", "{f}:not_a_model"], "must return a torch.nn.Module"),
    (["probe", "{f}:model_only"], "--input-shape"),
    (["probe", "{f}:model_only", "--input-shape", "12,x"], "comma-separated positive integers"),
    (["probe", "{f}:model_only", "--input-shape", "12,5"], "mat1 and mat2 shapes cannot be multiplied"),
    (["probe", "{f}:nan_model"], "forward pass itself is non-finite"),
    (["probe", "{f}:healthy", "--max-params", "10"], "--layers PATTERN"),
    (["probe", "{f}:healthy", "--layers", "zzz*"], "layers are named like"),
    (["probe", "{f}:model_only", "--inputs", "nothere.pt"], "'inputs'"),
])
def test_user_mistakes_exit_2_with_a_clear_message(factories, capsys, argv, needle):
    argv = [a.format(f=factories) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err


def test_unsafe_pickle_is_refused(factories, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"inputs": torch.randn(2, 8), "obj": object.__new__(_Custom)}, bad)
    assert main(["probe", f"{factories}:model_only", "--inputs", str(bad)]) == 2
    assert "weights_only" in capsys.readouterr().err


class _Custom:
    pass
