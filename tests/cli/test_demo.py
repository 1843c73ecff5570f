"""The README's main job: `gradhealth demo` writes every section's figures and an index."""

import contextlib
import importlib
import io

import pytest

from gradhealth.cli import main
from gradhealth.gallery import SECTIONS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One `gradhealth demo` run shared by the tests that read it. The trainability section trains
    a 3 x 2 grid instead of its 7 x 5 (what it measures is checked cell by cell in
    tests/gallery/test_gallery_trainability.py); every other section runs as the demo does."""
    from gradhealth.gallery import trainability as section

    out = tmp_path_factory.mktemp("demo") / "gallery"
    printed = io.StringIO()
    mp = pytest.MonkeyPatch()
    mp.setattr(section, "SIGMA_W2", (1.0, 1.75, 4.0))
    mp.setattr(section, "DEPTHS", (3, 40))
    section.measure.cache_clear()
    try:
        with contextlib.redirect_stdout(printed):
            rc = main(["demo", "--out", str(out), "--no-progress"])
    finally:
        mp.undo()
        section.measure.cache_clear()
    return rc, out, printed.getvalue()


@pytest.mark.slow
def test_demo_writes_every_figure_and_the_index(demo):
    rc, out, _ = demo
    assert rc == 0
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


@pytest.mark.slow
def test_demo_index_is_rendered_html_and_links_the_reports(demo):
    rc, out, printed = demo
    assert rc == 0
    html = (out / "index.html").read_text()
    # real HTML, not Markdown in <pre>: tables, code, emphasis; no Markdown syntax left over
    assert "<table>" in html and "<code>" in html and "<strong>" in html
    assert "<strong>**" not in html and "<pre>|" not in html and "](" not in html and "<p>|" not in html
    report = out / "report" / "index.html"
    assert report.exists() and str(report) in printed
    assert 'href="report/index.html"' in html
    pages = sorted(p.name for p in (out / "report").glob("*.html"))
    assert pages == ["cure_sigmoid_before_after.html", "index.html", "probe_relu_he_after_cure.html",
                     "probe_sigmoid_before_cure.html", "watched_run_broken.html", "watched_run_healthy.html"]
    for p in (p for p in pages if p != "index.html"):
        assert f'href="{p}"' in (out / "report" / "index.html").read_text(), p
    assert "VANISHING" in (out / "report" / "watched_run_broken.html").read_text().upper()


def test_demo_without_scikit_learn_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sklearn" else real(n, *a))
    assert main(["demo", "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "scikit-learn" in err and "gradhealth[demo]" in err
