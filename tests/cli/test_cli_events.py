"""`gradhealth events` and `gradhealth summary` on stored runs."""

import json
import subprocess
import sys

import pytest

from gradhealth.cli import main
from gradhealth.events import Event
from gradhealth.store import RunStore

EVIL = "blocks.[bold red]0[/bold red].fc"   # a layer name that is also rich markup


def _write_run(path, events, steps=5):
    with RunStore(path) as store:
        store.write_layers([{"index": 0, "name": "fc1", "type": "Linear", "n_params": 10},
                            {"index": 1, "name": EVIL, "type": "Linear", "n_params": 10}])
        store.append_steps([{"step": i, "loss": 1.0 / (i + 1), "global_grad_norm": 1.0}
                            for i in range(steps)])
        store.append_events(events)
    return path


@pytest.fixture
def sick_run(tmp_path):
    return _write_run(tmp_path / "sick", [
        Event(3, "grad_spike", "fc1", "warning", "gradient norm 40x its median", {"ratio": 40.0},
              "gradhealth.remedies.clip_grad_norm_(model.parameters(), 1.0)"),
        Event(4, "nonfinite", EVIL, "critical", "NaN in the gradient of [red]x[/red]",
              {"max_abs": float("inf")}, "lower the learning rate", since=2),
        Event(4, "guard", None, "info", "step skipped"),
    ])


@pytest.fixture
def clean_run(tmp_path):
    return _write_run(tmp_path / "clean", [Event(0, "guard", None, "info", "note only")])


def test_summary_names_first_bad_layer_and_step(sick_run, capsys):
    assert main(["summary", str(sick_run)]) == 1
    out = capsys.readouterr().out
    assert "first problem: nonfinite in " + EVIL + " at step 2" in out.replace("\n", " ")
    assert "lower the learning rate" in out and "clip_grad_norm_" in out


def test_summary_json(sick_run, capsys):
    assert main(["summary", str(sick_run), "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert s["first"]["layer"] == EVIL and s["first"]["since"] == 2 and s["first"]["step"] == 4
    assert s["counts"] == {"grad_spike": 1, "nonfinite": 1, "guard": 1}
    assert s["n_pathologies"] == 2 and s["healthy"] is False and s["status"] == "finished"
    assert s["worst_layers"][0]["layer"] == EVIL
    assert [r["remedy"] for r in s["remedies"]][0] == "lower the learning rate"
    assert s["steps"]["count"] == 5


def test_clean_run_exits_0(clean_run, capsys):
    assert main(["summary", str(clean_run)]) == 0
    assert "healthy" in capsys.readouterr().out
    assert main(["events", str(clean_run)]) == 0


def test_events_table_escapes_layer_names(sick_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the cells
    assert main(["events", str(sick_run)]) == 1
    out = capsys.readouterr().out
    # printed literally, not interpreted as markup (which would drop the brackets)
    assert EVIL in out and "NaN in the gradient of [red]x[/red]" in out


def test_events_json_and_filters(sick_run, capsys):
    assert main(["events", str(sick_run), "--json"]) == 1
    evs = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in evs] == ["grad_spike", "nonfinite", "guard"]
    assert evs[1]["evidence"]["max_abs"] == "inf"  # JSON has no Infinity: spelled out
    assert main(["events", str(sick_run), "--json", "--kind", "guard"]) == 0  # info only
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["guard"]
    assert main(["events", str(sick_run), "--json", "--layer", "fc1"]) == 1
    assert [e["layer"] for e in json.loads(capsys.readouterr().out)] == ["fc1"]
    assert main(["events", str(sick_run), "--json", "--layer", "blocks.*"]) == 1
    assert [e["layer"] for e in json.loads(capsys.readouterr().out)] == [EVIL]
    assert main(["events", str(sick_run), "--layer", "nomatch"]) == 0
    assert "no events matching layer nomatch" in capsys.readouterr().out


def test_unknown_kind_is_a_usage_error(sick_run, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["events", str(sick_run), "--kind", "explodingg"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["events", "summary"])
def test_missing_or_foreign_run_dir_exits_2(cmd, tmp_path, capsys):
    assert main([cmd, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main([cmd, str(tmp_path)]) == 2
    assert "not a gradhealth run" in capsys.readouterr().err


def test_summary_of_a_run_still_being_written(tmp_path, capsys):
    store = RunStore(tmp_path / "live", flush_every=0)
    store.append_steps([{"step": 0, "loss": float("nan")}])
    store.append_events([Event(0, "nonfinite", None, "critical", "loss is NaN")])
    store.flush()
    try:
        assert main(["summary", str(tmp_path / "live"), "--json"]) == 1
        s = json.loads(capsys.readouterr().out)
        assert s["status"] == "running or stopped early" and s["steps"]["nonfinite_steps"] == 1
        assert s["steps"]["last_loss"] == "nan"
    finally:
        store.close()


def test_subprocess_summary(sick_run):
    proc = subprocess.run([sys.executable, "-m", "gradhealth", "summary", str(sick_run)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "first problem" in proc.stdout


def test_events_table_puts_the_remedy_under_the_message_when_narrow():
    from rich.console import Console

    from gradhealth.events import Event
    from gradhealth.report.run_view import EventsTable, events_table

    code = "gradhealth.remedies.clip_grad_norm_(model.parameters(), max_norm=1.0)"
    ev = [Event(3, "grad_spike", "encoder.layers.0.linear1", "warning", "spike", {}, code)]
    wide = [c.header for c in events_table(ev, width=160).columns]
    narrow = [c.header for c in events_table(ev, width=80).columns]
    assert "remedy" in wide and "remedy" not in narrow and narrow[-1] == "message / remedy"
    for width in (80, 160):  # the whole code is there either way (folded, never cut)
        con = Console(width=width, record=True, file=open("/dev/null", "w"))
        con.print(EventsTable(ev))
        rows = [line.split("│") for line in con.export_text().splitlines() if "│" in line]
        flat = "".join(r[-2].strip() for r in rows)  # the last column, line after line
        assert code.replace(" ", "") in flat.replace(" ", "")
