"""``gradhealth report`` on good and bad input: exit codes, messages, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gradhealth.cli import main


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_of_a_run_writes_html_and_exits_1_for_a_pathology(poisoned_run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    code, stdout, err = _run(["report", str(poisoned_run_dir), "--out", str(out)], capsys)
    assert code == 1 and out.stat().st_size > 10_000
    assert "nonfinite" in stdout and str(out) in stdout


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_report_as_image(poisoned_run_dir, tmp_path, capsys, fmt):
    out = tmp_path / f"r.{fmt}"
    code, _, _ = _run(["report", str(poisoned_run_dir), "--out", str(out)], capsys)
    assert code == 1 and out.stat().st_size > 1000


def test_report_of_a_probe_json(probe_result, tmp_path, capsys):
    src = tmp_path / "probe.json"
    src.write_text(probe_result.to_json())
    out = tmp_path / "p.html"
    code, stdout, _ = _run(["report", str(src), "--out", str(out)], capsys)
    assert code == 1 and probe_result.verdict in stdout and out.exists()


def _bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.sqlite").write_bytes(os.urandom(4096))
    (tmp_path / "bad.json").write_text("{\"verdict\": ")
    (tmp_path / "wrong.json").write_text(json.dumps({"not": "a probe"}))
    return {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "corrupt": corrupt,
            "bad json": tmp_path / "bad.json", "wrong json": tmp_path / "wrong.json"}


def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, capsys):
    for label, src in _bad_sources(tmp_path).items():
        out = tmp_path / f"{label}.html"
        code, _, err = _run(["report", str(src), "--out", str(out)], capsys)
        assert code == 2, label
        assert err.startswith("gradhealth report: error:") and "Traceback" not in err, (label, err)
        assert str(src.name) in err, (label, err)


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "gradhealth", "report", str(tmp_path / "empty"),
                        "--out", str(tmp_path / "x.html")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "run.sqlite" in p.stderr


def test_half_written_run_gives_a_snapshot_report(tmp_path, capsys):
    """A process that wrote some steps and died without closing the store."""
    run_dir = tmp_path / "half"
    code = textwrap.dedent(f"""
        import os
        from gradhealth.store import RunStore
        s = RunStore({str(run_dir)!r})
        s.write_layers([{{"index": 0, "name": "l0", "type": "Linear", "n_params": 3}}])
        for i in range(5):
            s.append_steps([{{"step": i, "loss": 1.0, "global_grad_norm": 0.5}}])
            s.append_layer_stats([{{"step": i, "layer": 0, "grad_norm": 0.5}}])
        s.flush()
        os._exit(0)  # dies: no close, no closed_at
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    out = tmp_path / "half.html"
    rc, stdout, err = _run(["report", str(run_dir), "--out", str(out)], capsys)
    assert rc == 0 and out.exists()
    assert "not finished" in err and "snapshot up to step 4" in err
    assert "snapshot up to step 4" in out.read_text()
