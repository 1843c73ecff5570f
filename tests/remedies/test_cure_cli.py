"""`gradhealth cure` and apply_prescription: probe, apply the top prescription to a copy, probe again."""

import json
import textwrap

import pytest
import torch
from torch import nn

from gradhealth.cli import main
from gradhealth.errors import ParameterError
from gradhealth.events import Prescription
from gradhealth.remedies import apply_prescription
from gradhealth.remedies.prescribe import applies_to_model

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn
    import gradhealth.remedies as R

    def chaotic():
        torch.manual_seed(0)
        layers = [nn.Linear(16, 32), nn.Tanh()]
        for _ in range(38):
            layers += [nn.Linear(32, 32), nn.Tanh()]
        model = nn.Sequential(*layers, nn.Linear(32, 4))
        R.gaussian_(model, sigma_w2=4.0)
        return model, torch.randn(64, 16)

    def healthy():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
""")


@pytest.fixture
def factory(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(FACTORY)
    return p


def test_cure_applies_top_prescription_and_saves(factory, tmp_path, capsys):
    out_file = tmp_path / "cured.pt"
    rc = main(["cure", f"{factory}:chaotic", "--save", str(out_file)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verdict before: exploding" in text and "after: healthy" in text
    assert "applied (rank 1): gradhealth.remedies.critical_(model, activation='tanh'" in text
    assert "gain before" in text and "saved the cured state_dict" in text
    state = torch.load(out_file, weights_only=True)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), *[m for _ in range(38) for m in (nn.Linear(32, 32), nn.Tanh())],
                          nn.Linear(32, 4))
    fresh.load_state_dict(state)
    assert abs(float(fresh[2].weight.detach().var()) * 32 - 1.0) < 0.3  # sigma_w2 = 1: the critical point


def test_cure_json(factory, capsys):
    rc = main(["cure", f"{factory}:chaotic", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["before"]["verdict"] == "exploding" and data["after"]["verdict"] == "healthy"
    assert data["applied"][0]["code"].startswith("gradhealth.remedies.critical_")
    assert data["changes"][0]["function"] == "critical_"


def test_cure_on_a_healthy_model(factory, capsys):
    rc = main(["cure", f"{factory}:healthy", "--input-shape", "32,16"])
    assert rc == 0 and "nothing to cure" in capsys.readouterr().out


def test_cure_usage_errors(factory, capsys):
    assert main(["cure", f"{factory}:healthy", "--input-shape", "32,16", "--top", "0"]) == 2
    assert "'top' parameter of gradhealth cure" in capsys.readouterr().err
    assert main(["cure", f"{factory}:healthy", "--input-shape", "32,16", "--save", "x.pt"]) == 2
    assert "nothing to save" in capsys.readouterr().err
    assert main(["cure", f"{factory}:healthy"]) == 2  # no inputs
    assert "'input-shape' parameter of gradhealth cure" in capsys.readouterr().err
    assert main(["cure", f"{factory}:nope", "--input-shape", "4,16"]) == 2
    assert "'target' parameter of gradhealth cure" in capsys.readouterr().err
    assert main(["cure", f"{factory}:healthy", "--input-shape", "4,,16"]) == 2
    assert "'input-shape' parameter of gradhealth cure" in capsys.readouterr().err
    assert main(["cure", f"{factory}:healthy", "--input-shape", "4,16", "--save", "/no/such/dir/x.pt"]) == 2
    assert "'save' parameter of gradhealth cure" in capsys.readouterr().err


def test_apply_prescription_parses_never_evals():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    (s,) = apply_prescription("gradhealth.remedies.orthogonal_(model, gain=1.0)", model)
    assert s.function == "orthogonal_" and len(s.changed) == 2
    out = apply_prescription(Prescription(1, "a", "gradhealth.remedies.lsuv_(model, inputs)", "r"), model,
                             torch.randn(32, 4))
    assert out[0].function == "lsuv_"
    for code in ("gradhealth.remedies.clip_grad_norm_(model.parameters(), max_norm=1.0)",
                 "for g in optimizer.param_groups: g['lr'] = 0.1",
                 "# nn.RNN(...) -> nn.LSTM(...), then: gradhealth.remedies.orthogonal_(model, gain=1.0)",
                 "gradhealth.remedies.he_(model, activation=__import__('os').getcwd())",
                 "gradhealth.remedies.he_(model); import os"):
        assert not applies_to_model(code)
        with pytest.raises(ParameterError, match="'prescription' parameter of apply_prescription"):
            apply_prescription(code, model)
    with pytest.raises(ParameterError, match="'inputs' parameter"):
        apply_prescription("gradhealth.remedies.lsuv_(model, inputs)", model)


def test_cure_save_to_a_directory_and_a_huge_seed_are_usage_errors(factory, tmp_path, capsys):
    """``--save DIR`` crashed the error handler itself ('RuntimeError' object has no attribute
    'strerror'); ``--seed 99999999999999999999`` overflowed inside torch.manual_seed (a
    ValueError traceback). Both are usage errors now (exit 2, the option named)."""
    rc = main(["cure", f"{factory}:chaotic", "--save", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "'save' parameter" in err and "cured.pt" in err and "Traceback" not in err
    for cmd in (["cure", f"{factory}:chaotic"], ["probe", f"{factory}:chaotic"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--seed", "99999999999999999999"])
        assert exc.value.code == 2
        assert "--seed" in capsys.readouterr().err
