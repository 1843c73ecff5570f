"""The README's main job: `gradhealth demo` writes every section's figures and an index."""

import importlib

import pytest

from gradhealth.cli import main
from gradhealth.gallery import SECTIONS


@pytest.mark.slow
def test_demo_writes_every_figure_and_the_index(tmp_path, capsys):
    out = tmp_path / "gallery"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    expected = [f.slug for s in SECTIONS
                for f in importlib.import_module(f"gradhealth.gallery.{s}").figures() if f.draw]
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert pngs == sorted(expected)
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    index = (out / "index.md").read_text()
    for slug in expected:
        assert f"({slug}.png)" in index
    assert (out / "index.html").exists()


def test_demo_unknown_section_exits_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "'sections'" in capsys.readouterr().err


def test_demo_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "'out'" in capsys.readouterr().err
