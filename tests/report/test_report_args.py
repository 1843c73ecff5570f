"""``gradhealth report``: --out and --format must agree, --out must be in an existing directory
(as for ``phase --out``), and a JSON source must have the shape of a saved probe result.

Oracles: the bytes written (a PNG starts with the PNG signature, an SVG holds ``<svg``, an HTML
page ``<html``), whether a file or folder appeared at all, ``gradhealth phase``'s refusal of the
same missing folder, and ``ProbeResult.to_dict()`` (each bad JSON is a real probe result's dict
with one part broken).
"""

from __future__ import annotations

import json

import pytest
from tiny_runs import finished_run

from gradhealth.cli import main


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("report_args") / "run")


@pytest.mark.parametrize("name,fmt", [("x.png", "svg"), ("x.html", "png"), ("x.svg", "html"), ("x.htm", "png"),
                                      ("x.PNG", "svg")])
def test_out_suffix_and_format_must_agree(small_run, tmp_path, capsys, name, fmt):
    out = tmp_path / name
    code, _, err = _run(["report", small_run, "--out", out, "--format", fmt], capsys)
    assert code == 2 and not out.exists()
    assert err.startswith("gradhealth report: error: The 'format' parameter") and "Fix:" in err


@pytest.mark.parametrize("name", ["x.pdf", "x.jpg"])
def test_a_suffix_of_another_format_is_refused(small_run, tmp_path, capsys, name):
    out = tmp_path / name
    code, _, err = _run(["report", small_run, "--out", out], capsys)
    assert code == 2 and not out.exists() and "The 'out' parameter" in err


@pytest.mark.parametrize("name,fmt,magic", [("x.PNG", "png", b"\x89PNG\r\n\x1a\n"), ("x.svg", "svg", b"<svg"),
                                            ("x.svg", None, b"<svg"), ("x.html", "html", b"<html"),
                                            ("plain", "png", b"\x89PNG\r\n\x1a\n")])
def test_agreeing_out_and_format_write_that_format(small_run, tmp_path, capsys, name, fmt, magic):
    out = tmp_path / name
    code, _, _ = _run(["report", small_run, "--out", out, *(["--format", fmt] if fmt else [])], capsys)
    assert code == 0 and magic in out.read_bytes()[:4096]


def test_a_missing_out_folder_is_refused_like_phase(small_run, tmp_path, capsys):
    code, _, oracle = _run(["phase", "--out", tmp_path / "nodir" / "p.png"], capsys)
    assert code == 2 and "must be a file in an existing directory" in oracle
    out = tmp_path / "nodir" / "x.html"
    code, _, err = _run(["report", small_run, "--out", out], capsys)
    assert code == 2 and not (tmp_path / "nodir").exists()
    assert "The 'out' parameter of gradhealth report must be a file in an existing directory" in err
    assert "create" in err and "nodir" in err


def test_an_out_that_is_a_folder_is_refused(small_run, tmp_path, capsys):
    code, _, err = _run(["report", small_run, "--out", tmp_path], capsys)
    assert code == 2 and "not a directory" in err


def _broken(good: dict) -> dict:
    """A saved probe result with one part broken: label -> (data, what the message must name)."""
    no_layers = {k: v for k, v in good.items() if k != "layers"}
    layer = {k: v for k, v in good["layers"][0].items() if k != "name"}
    return {
        "only a verdict": ({"verdict": good["verdict"]}, "'layers'"),
        "no layers": (no_layers, "'layers'"),
        "a list": ([1, 2], "a list"),
        "layers a string": (dict(good, layers="oops"), "layers"),
        "layers of numbers": (dict(good, layers=[1, 2]), "layers[0]"),
        "a layer without a name": (dict(good, layers=[layer] + good["layers"][1:]), "'name'"),
        "an unknown verdict": (dict(good, verdict="<script>"), "verdict"),
        "findings an object": (dict(good, findings={"a": 1}), "findings"),
        "loss a list": (dict(good, loss=[1]), "loss"),
        "a finding's evidence a string": (dict(good, findings=[dict(good["findings"][0], evidence="x")]),
                                          "evidence"),
    }


def test_probe_json_of_the_wrong_shape_is_a_clear_error(probe_result, tmp_path, capsys):
    good = probe_result.to_dict()
    ok = tmp_path / "good.json"
    ok.write_text(json.dumps(good))
    code, _, _ = _run(["report", ok, "--out", tmp_path / "good.html"], capsys)
    assert code == 1  # the control: a real saved probe result (vanishing) is reported
    for i, (label, (data, names)) in enumerate(_broken(good).items()):
        src = tmp_path / f"bad{i}.json"
        src.write_text(json.dumps(data))
        out = tmp_path / f"bad{i}.html"
        code, stdout, err = _run(["report", src, "--out", out], capsys)
        assert code == 2, (label, stdout, err)
        assert err.startswith("gradhealth report: error: ") and "Traceback" not in err, label
        assert str(src) in err and names in err and "Fix:" in err, (label, err)
        assert not out.exists(), label


def test_a_deeply_nested_json_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "deep.json"
    src.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = _run(["report", src, "--out", tmp_path / "deep.html"], capsys)
    assert code == 2 and err.startswith("gradhealth report: error: ") and str(src) in err
