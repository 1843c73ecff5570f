"""`gradhealth trainability`: a tiny grid end to end, JSON, cache, and usage errors (exit 2)."""

import json

import pytest

from gradhealth.cli import main
from gradhealth.theory.trainability import depth_scale_curve

TINY = ["trainability", "--activation", "tanh", "--sigma-w2", "1.0,1.75,4.0", "--depths", "4,48", "--steps", "100",
        "--jobs", "1", "--no-progress"]


def test_tiny_grid_json_figure_and_cache(tmp_path, capsys):
    out = tmp_path / "t.png"
    args = TINY + ["--out", str(out), "--cache", str(tmp_path / "c"), "--json"]
    assert main(args) == 0
    cap = capsys.readouterr()
    d = json.loads(cap.out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d["trainable"] == [[1, 1, 1], [0, 1, 0]] and d["cached"] == 0
    assert "about" in cap.err and "6 cells (0 cached)" in cap.err     # the estimate, before training
    # the curve is the theory's own
    xi = depth_scale_curve("tanh", [1.0, 1.75, 4.0], 0.05).xi_c
    assert [float(v) for v in d["curve"]["xi_c"]] == pytest.approx(list(xi))
    assert d["fit"]["agreement"] == 1.0
    assert main(args) == 0                                        # resumes: everything cached
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] == 6 and again["accuracy"] == d["accuracy"]


def test_text_output_states_the_measured_k(tmp_path, capsys):
    assert main(TINY[:-5] + ["--depths", "2,3", "--steps", "3", "--no-cache", "--no-progress",
                             "--out", str(tmp_path / "f.png")]) == 0
    text = capsys.readouterr().out
    assert "measured k" in text and "paper's k = 6" in text and "wrote" in text


@pytest.mark.parametrize("extra, needle", [
    (["--activation", "nope"], "activation"),
    (["--depths=-1,4"], "'depth_grid'"),
    (["--depths", ""], "'depth_grid'"),
    (["--sigma-w2", "a,b"], "'sigma-w2'"),
    (["--jobs", "0"], "'jobs'"),
    (["--steps", "0"], "'steps'"),
    (["--out", "x.txt"], "'out'"),
])
def test_usage_errors_exit_2(extra, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["trainability", "--no-cache", "--no-progress"] + extra) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_text_output_fits_80_columns_without_splitting_a_number(tmp_path, capsys, monkeypatch):
    """Folded between words (the summary's lines were 100-130 columns): every printed line fits
    80 columns, and unfolding gives back the result's own summary, token for token."""
    from gradhealth.experiments import TrainabilityResult

    monkeypatch.setenv("COLUMNS", "80")
    args = TINY[:-5] + ["--depths", "2,3", "--steps", "3", "--jobs", "1", "--cache", str(tmp_path / "c"),
                        "--no-progress", "--out", str(tmp_path / "f.png")]
    assert main(args + ["--json"]) == 0
    summary = TrainabilityResult.from_dict(json.loads(capsys.readouterr().out)).summary()
    assert main(args) == 0          # the same cells, from the cache
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    printed = " ".join(out.split())
    for line in summary.splitlines():
        want = " ".join(line.split())
        if "from cache;" in want:   # the cached count and the seconds differ between the two runs
            want = want.split("cells;")[0]
        assert want in printed, (want, out)


def test_unknown_activation_names_the_usable_ones_and_no_callable(capsys):
    assert main(["trainability", "--activation", "nope", "--no-cache", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tanh" in err and "relu" in err and "derivative=" not in err and "callable" not in err
    assert "trainability_of" in err


def test_a_cache_that_is_a_file_and_a_wrong_figure_suffix_are_usage_errors(tmp_path, capsys):
    """``--cache FILE`` raised FileExistsError after the cells had started; ``--out t.txt``
    suggested ``--out phase.png`` (the phase command's example)."""
    f = tmp_path / "afile.txt"
    f.write_text("x")
    rc = main(["trainability", "--no-progress", "--cache", str(f), "--sigma-w2", "1", "--depths", "2",
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "'cache' parameter" in err and "--no-cache" in err and "Traceback" not in err
    assert main(["trainability", "--out", str(tmp_path / "t.txt")]) == 2
    err = capsys.readouterr().err
    assert "trainability.png" in err and "phase.png" not in err
