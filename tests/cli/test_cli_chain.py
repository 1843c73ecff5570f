"""`gradhealth chain` and `gradhealth power`, in-process through gradhealth.cli.main."""

import json

import pytest

from gradhealth.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_chain_table_tanh_w8(capsys):
    code, out, err = run(capsys, "chain", "--activation", "tanh", "--weight", "8", "--depth", "3")
    assert code == 0 and err == ""
    assert "tanh chain" in out and "512" in out and "x8" in out
    assert "dJ/dw1 = dJ/dy (1) * dy/dz3" in out and "smallest factor" in out


def test_chain_json(capsys):
    code, out, _ = run(capsys, "chain", "-a", "relu", "-w", "2.34", "-L", "20", "--x-range", "0", "1",
                       "--at", "1", "--json")
    assert code == 0
    d = json.loads(out)
    rows = d["chain"]["per_depth"]
    assert len(rows) == 20 and rows[-1]["max_abs_slope"] == pytest.approx(2.34 ** 20)
    layers = d["factors"]["layers"]
    assert layers[0]["grad_w"] == pytest.approx(2.34 ** 19)
    assert len(d["factors"]["dJ_dw1_factors"]) == 2 * 19 + 3


def test_chain_overflow_is_reported_as_inf_strings(capsys):
    code, out, _ = run(capsys, "chain", "-a", "relu", "-w", "8", "-L", "400", "--points", "5", "--json")
    assert code == 0
    d = json.loads(out)["chain"]
    assert d["output_overflow_depth"] == 342 and d["slope_overflow_depth"] == 342
    assert d["per_depth"][341]["max_abs_slope"] == "inf"
    code, out, _ = run(capsys, "chain", "-a", "relu", "-w", "8", "-L", "400", "--points", "5")
    assert code == 0 and "overflow" in out and "342" in out and "inf" in out and "..." in out


def test_chain_per_layer_weights_and_biases(capsys):
    code, out, _ = run(capsys, "chain", "-a", "sigmoid", "-w", "8", "-b", "0", "-4", "-4", "--json")
    assert code == 0
    d = json.loads(out)["chain"]
    assert d["depth"] == 3 and d["biases"] == [0.0, -4.0, -4.0]
    assert [r["max_abs_slope"] for r in d["per_depth"]] == pytest.approx([2.0, 4.0, 8.0])


def test_chain_plot_writes_the_figure(capsys, tmp_path):
    path = tmp_path / "tanh.png"
    code, out, _ = run(capsys, "chain", "--activation", "tanh", "--weight", "8", "--depth", "3",
                       "--plot", str(path))
    assert code == 0 and path.stat().st_size > 10_000 and "wrote" in out
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, words", [
    (["chain", "--activation", "tahn"], ["'activation'", "'tahn'", "tanh"]),
    (["chain", "--depth", "0"], ["'depth'", "Got 0"]),
    (["chain", "--weight", "nan"], ["'weight'", "finite"]),
    (["chain", "--weight", "inf"], ["'weight'", "finite"]),
    (["chain", "--bias", "nan"], ["'bias'", "finite"]),
    (["chain", "--x-range", "1", "-1"], ["'x-range'", "LOW < HIGH"]),
    (["chain", "--x-range", "1", "1"], ["'x-range'"]),
    (["chain", "--x-range", "0", "inf"], ["'x-range'"]),
    (["chain", "--points", "1"], ["'points'"]),
    (["chain", "--weight", "1", "2", "--depth", "3"], ["'weight'", "depth=3"]),
    (["chain", "--plot", "/no/such/dir/x.png"], ["'plot'", "existing directory"]),
    (["chain", "--plot", "figure.txt"], ["'plot'", ".png"]),
    (["power", "--depth", "0"], ["'depth'"]),
    (["power", "--weight", "nan"], ["'weight'"]),
])
def test_bad_input_exits_2_with_a_message(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "Traceback" not in err and "error:" in err
    for w in words:
        assert w in err


def test_plot_into_a_directory_path_exits_2(capsys, tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    code, _, err = run(capsys, "chain", "--plot", str(d))
    assert code == 2 and "'plot'" in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["chain", "--depth", "three"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_power_table_and_limits(capsys):
    code, out, err = run(capsys, "power", "--weight", "0.6", "--depth", "15")
    assert code == 0 and err == ""
    assert "0.000470185" in out and "0.216" in out
    assert "float16" in out and "bfloat16" in out and "stalls" in out


def test_power_json(capsys):
    code, out, _ = run(capsys, "power", "--weight", "1.6", "--depth", "15", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["table"]["values"][-1] == pytest.approx(1152.921504606847)
    lim = {p["dtype"]: p for p in d["limits"]}
    assert lim["float16"]["overflow_depth"] == 24 and lim["float16"]["zero_depth"] is None
    assert lim["float64"]["overflow_depth"] == 1511


def test_power_overflowing_table_uses_inf_strings(capsys):
    code, out, _ = run(capsys, "power", "--weight", "2.34", "--depth", "900", "--json")
    assert code == 0
    assert json.loads(out)["table"]["values"][-1] == "inf"
    code, out, _ = run(capsys, "power", "--weight", "2.34", "--depth", "900")
    assert code == 0 and "inf" in out and "..." in out


def test_gallery_section_builds(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path), "--only", "chains", "--no-progress")
    assert code == 0
    pngs = sorted(p.name for p in tmp_path.glob("chain_*.png"))
    assert len(pngs) == 10
    md = (tmp_path / "index.md").read_text()
    assert "0.7" in md and "| 0.6 |" in md and "1152.92" in md


def test_negative_numbers_in_scientific_notation_are_values(capsys):
    """argparse took ``-1e3`` for an option ("expected one argument"): ``--x-range -1e3 1``
    could not be entered at all. Oracle: the same command written without the exponent."""
    from gradhealth.cli import main

    outs = []
    for xr, w in ((["-1e3", "1"], "-1e-1"), (["-1000", "1"], "-0.1")):
        assert main(["chain", "--x-range", *xr, "--weight", w, "--json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert main(["power", "--weight", "-1e-1", "--json"]) == 0
    a = capsys.readouterr().out
    assert main(["power", "--weight", "-0.1", "--json"]) == 0
    assert a == capsys.readouterr().out



def test_a_non_finite_weight_names_the_option_and_a_fix(capsys):
    """``--weight nan`` named the library functions (scalar_chain, power_table) and gave no
    Fix line."""
    from gradhealth.cli import main

    for cmd in (["chain", "--weight", "nan"], ["power", "--weight", "-inf"], ["chain", "--bias", "inf"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"'{cmd[1][2:]}' parameter of gradhealth {cmd[0]}" in err and "Fix:" in err, err
        assert "scalar_chain" not in err and "power_table" not in err
