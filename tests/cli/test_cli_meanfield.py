"""``gradhealth meanfield`` and ``gradhealth phase``, in-process through gradhealth.cli.main."""

import json
import math

import pytest

from gradhealth.cli import main
from gradhealth.theory.criticality import critical_sigma_w2
from gradhealth.theory.meanfield import analyze

KEYS = ["q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "phase"]


def test_meanfield_table_and_interpretation(capsys):
    assert main(["meanfield", "--activation", "tanh", "--sigma-w2", "2.5", "--sigma-b2", "0.05"]) == 0
    out = capsys.readouterr().out
    r = analyze("tanh", 2.5, 0.05)
    assert "chaotic" in out and f"{r.chi_1:.6g}" in out and "trainable depth" in out
    assert "chi_1 = 1.13 > 1" in out


def test_meanfield_json_keys_exactly(capsys):
    assert main(["meanfield", "-a", "tanh", "--sigma-w2", "1.5", "--sigma-b2", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d) == KEYS
    r = analyze("tanh", 1.5, 0.05)
    assert d["chi_1"] == pytest.approx(r.chi_1) and d["phase"] == "ordered"


def test_meanfield_json_infinities_are_strings(capsys):
    assert main(["meanfield", "-a", "relu", "--sigma-w2", "3", "--sigma-b2", "0.1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["q_star"] == "inf" and d["xi_q"] == "nan" and d["xi_c"] == "inf" and d["chi_1"] == 1.5


def test_meanfield_critical(capsys):
    assert main(["meanfield", "-a", "tanh", "--sigma-b2", "0.05", "--critical", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d) == KEYS + ["critical_sigma_w2"]
    assert d["critical_sigma_w2"] == pytest.approx(critical_sigma_w2("tanh", 0.05))
    assert d["phase"] == "critical" and d["chi_1"] == pytest.approx(1.0)
    assert main(["meanfield", "-a", "relu", "--sigma-b2", "0.1", "--critical"]) == 0
    out = capsys.readouterr().out
    assert "critical sigma_w2 = 2" in out and "q* = inf" in out


@pytest.mark.parametrize("argv,needle", [
    (["meanfield", "-a", "nope", "--sigma-w2", "1"], "activation"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "-1"], "sigma_w2"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "nan"], "sigma_w2"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "1", "--sigma-b2", "inf"], "sigma_b2"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "1", "--dropout-keep", "0"], "dropout_keep"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "1", "--dropout-keep", "1.2"], "dropout_keep"),
    (["meanfield", "-a", "tanh", "--sigma-w2", "1", "--critical"], "sigma-w2"),
    (["meanfield", "-a", "tanh"], "sigma-w2"),
    (["meanfield", "-a", "softplus", "--sigma-b2", "0.05", "--critical"], "transition"),
    (["phase", "-a", "nope", "--out", "x.png"], "activation"),
    (["phase", "-a", "tanh", "--out", "/no/such/dir/p.png"], "out"),
    (["phase", "-a", "tanh", "--out", "p.txt"], "out"),
    (["phase", "-a", "tanh", "--grid", "1"], "grid"),
    (["phase", "-a", "tanh", "--sigma-w2-max", "-2"], "sigma-w2-max"),
    (["phase", "-a", "tanh", "--dropout-keep", "2"], "dropout_keep"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and needle in err and "Traceback" not in err


def test_unparsable_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["meanfield", "--sigma-w2", "abc"])
    assert info.value.code == 2


def test_phase_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "phase.png"
    assert main(["phase", "-a", "tanh", "--out", str(out), "--grid", "40"]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "critical sigma_w2: 1 at sigma_b2=0, 1.761 at sigma_b2=0.05" in text
    assert "He" in text and "chaotic" in text


def test_phase_json_and_xi_c_colour(tmp_path, capsys):
    out = tmp_path / "relu.svg"
    assert main(["phase", "-a", "relu", "--color", "xi_c", "--grid", "30", "--out", str(out),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert out.exists() and d["critical_line"]["sigma_w2"] == [2.0, 2.0, 2.0, 2.0]
    assert d["note"] == ""
    he = [r for r in d["inits"] if r["init"] == "He"]
    assert all(r["phase"] == "critical" and r["xi_c"] == "inf" for r in he)
    assert math.isclose(d["inits"][0]["chi_1"], 0.5)


def test_phase_unwritable_file(tmp_path, capsys):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        import os

        if os.access(target, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("cannot make a read-only directory as this user")
        assert main(["phase", "--out", str(target / "p.png"), "--grid", "5"]) == 2
        assert "writable" in capsys.readouterr().err
    finally:
        target.chmod(0o700)


def test_phase_out_path_that_cannot_be_a_file(tmp_path, capsys):
    (tmp_path / "taken.png").mkdir()             # a directory where the figure should go
    (tmp_path / "plain").write_text("x")         # a file used as if it were a directory
    assert main(["phase", "--out", str(tmp_path / "taken.png"), "--grid", "5"]) == 2
    assert main(["phase", "--out", str(tmp_path / "plain" / "p.png"), "--grid", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("existing directory") == 2
