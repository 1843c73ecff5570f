"""TensorBoard and MLflow export of a stored run, read back with independent readers: the event
files parsed record by record (TFRecord framing + the Event protobuf), MLflow through its client.
Oracle: the run store itself (load_run) and the planted NaN (its step and layer)."""

from __future__ import annotations

import argparse
import math
import re
import struct
import subprocess
import sys
import warnings
from collections import defaultdict

import pytest
from integration_common import NAN_LAYER, NAN_STEP

from gradhealth.store import load_run

torch = pytest.importorskip("torch")


def read_events(logdir):
    """Every (tag, step) -> value / histogram / text from the tfevents files under logdir."""
    from tensorboardX.proto import event_pb2

    scalars, histos, texts = {}, {}, defaultdict(list)
    for f in sorted(logdir.rglob("*tfevents*")):
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("histo"):
                    histos[(v.tag, ev.step)] = v.histo
                elif v.HasField("tensor") and v.tensor.string_val:
                    texts[(v.tag, ev.step)].append(v.tensor.string_val[0].decode())
                else:
                    scalars[(v.tag, ev.step)] = v.simple_value
    return scalars, histos, texts


def stored_layer_values(run, step, field):
    return [r[field] for r in run.layer_stats if r["step"] == step and r[field] is not None]


def test_tensorboard_export_keeps_nan_counts_and_never_crashes_on_all_nan(nan_run, tmp_path):
    pytest.importorskip("tensorboardX")
    from gradhealth.integrations.export import to_tensorboard

    run_dir, _ = nan_run
    run = load_run(run_dir)
    to_tensorboard(run_dir, tmp_path / "tb")
    scalars, histos, texts = read_events(tmp_path / "tb")
    # the planted NaN: the loss and the layer's gradient norm at NAN_STEP are NaN, before it finite
    assert math.isnan(scalars[("loss", NAN_STEP)])
    assert math.isnan(scalars[(f"layer/{NAN_LAYER}/grad_norm", NAN_STEP)])
    assert math.isfinite(scalars[(f"layer/{NAN_LAYER}/grad_norm", NAN_STEP - 1)])
    assert scalars[("global/nonfinite_count", NAN_STEP)] == run.steps[NAN_STEP]["nonfinite_count"] > 0
    for step in (NAN_STEP - 1, NAN_STEP, NAN_STEP + 3):
        values = stored_layer_values(run, step, "grad_norm")
        n_nan = sum(math.isnan(v) for v in values)
        assert scalars[("hist/grad_norm/nan", step)] == n_nan
        assert scalars[("hist/grad_norm/posinf", step)] == 0
        n_finite = len(values) - n_nan
        if n_finite:
            assert histos[("hist/grad_norm", step)].num == n_finite
        else:   # every value NaN: counts written, no histogram, no "The histogram is empty"
            assert ("hist/grad_norm", step) not in histos
    assert ("hist/grad_norm", NAN_STEP) not in histos   # the NaN step's weight layers are all NaN
    # events as text at their step, naming the replayed layer
    text = "\n".join(texts[("events/text_summary", NAN_STEP)])
    assert f"nonfinite at {NAN_LAYER}:" in text and "\\(1 NaN, 0 Inf" not in text
    assert scalars[("events/nonfinite", NAN_STEP)] >= 1


@pytest.fixture
def file_store(monkeypatch):
    """MLflow >= 3.7 refuses the file store unless asked (mlflow-skinny has no SQL store)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def test_mlflow_export_writes_finite_points_and_nonfinite_counts_and_tags(nan_run, tmp_path, file_store):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from gradhealth.integrations.export import to_mlflow

    run_dir, _ = nan_run
    run = load_run(run_dir)
    uri = (tmp_path / "mlruns").as_uri()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # MLflow's own deprecation notes about the file store
        run_id = to_mlflow(run_dir, tracking_uri=uri, experiment="t")
        client = MlflowClient(tracking_uri=uri)
        hist = {m.step: m.value for m in client.get_metric_history(run_id, f"layer/{NAN_LAYER}/grad_norm")}
        nan_counts = {m.step: m.value for m in client.get_metric_history(run_id, "nonfinite/nan")}
        mrun = client.get_run(run_id)
        events = client.download_artifacts(run_id, "gradhealth/events.txt", str(tmp_path))
    steps, values = run.layer_series(NAN_LAYER, "grad_norm")
    for s, v in zip(steps, values):
        if math.isfinite(v):
            assert hist[int(s)] == pytest.approx(v)
        else:   # no misleading 1.8e308 point: the raw value is in a tag, counted per step
            assert int(s) not in hist
    assert NAN_STEP not in hist and NAN_STEP - 1 in hist
    assert nan_counts[NAN_STEP - 1] == 0 and nan_counts[NAN_STEP] > 0
    assert f"step {NAN_STEP}: nan" in mrun.data.tags[f"nonfinite/layer/{NAN_LAYER}/grad_norm"]
    assert mrun.data.tags["gradhealth.finished"] == "True"
    text = open(events).read()
    assert f"step {NAN_STEP}:" in text and NAN_LAYER in text


class Hostile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("a\x1b[2J/b", torch.nn.Linear(4, 4))
        self.add_module("a;b", torch.nn.Linear(4, 4))   # collides with the first once sanitised
        self.add_module("évil\u202e", torch.nn.Sequential(torch.nn.Linear(4, 2)))

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def test_hostile_layer_names_are_sanitised_and_unique(tmp_path, file_store):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("mlflow")
    import gradhealth
    from gradhealth.integrations.export import build_export, to_mlflow, to_tensorboard

    model = Hostile()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradhealth.watch(model, opt, run_dir=tmp_path / "run"):
        for _ in range(3):
            model(torch.randn(5, 4)).square().mean().backward()
            opt.step()
            opt.zero_grad()
    exp = build_export(load_run(tmp_path / "run"))
    names = {t.split("/")[1] for t, _, _ in exp.scalars if t.startswith("layer/")}
    assert len(names) == 3   # three layers, three names (the collision got an index)
    allowed = re.compile(r"^[A-Za-z0-9_\-./ ]+$")
    assert all(allowed.match(t) and "//" not in t and ".." not in t.split("/") for t, _, _ in exp.scalars)
    to_tensorboard(tmp_path / "run", tmp_path / "tb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_id = to_mlflow(tmp_path / "run", tracking_uri=(tmp_path / "ml").as_uri())   # MLflow validates names
    assert run_id
    scalars, _, _ = read_events(tmp_path / "tb")
    assert {t for t, _ in scalars} >= {t for t, _, _ in exp.scalars}


def _args(**kw):
    base = dict(run_dir=None, to="tensorboard", logdir=None, tracking_uri=None, experiment="gradhealth", run_name=None,
                follow=False, interval=2.0)
    return argparse.Namespace(**(base | kw))


def test_cli_export_runs_and_reports_a_missing_extra(nan_run, tmp_path, monkeypatch, capsys, file_store):
    from gradhealth.cli import export as cli_export

    run_dir, _ = nan_run
    if _importable("tensorboardX"):
        assert cli_export.run(_args(run_dir=str(run_dir), logdir=str(tmp_path / "tb"))) == 0
        assert list((tmp_path / "tb").rglob("*tfevents*"))
    if _importable("mlflow"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uri = (tmp_path / "ml").as_uri()
            assert cli_export.run(_args(run_dir=str(run_dir), to="mlflow", tracking_uri=uri)) == 0
        assert "logged MLflow run" in capsys.readouterr().out
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorboardX", "mlflow")] + ["tensorboardX", "mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)   # as if not installed
    assert cli_export.run(_args(run_dir=str(run_dir), logdir=str(tmp_path / "tb2"))) == 2
    assert "pip install 'gradhealth[tensorboard]'" in capsys.readouterr().err
    assert cli_export.run(_args(run_dir=str(run_dir), to="mlflow")) == 2
    assert "pip install 'gradhealth[mlflow]'" in capsys.readouterr().err
    assert cli_export.run(_args(run_dir=str(run_dir), to="mlflow", logdir="x")) == 2   # wrong option


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_cli_export_parser_imports_neither_torch_nor_a_writer():
    code = ("import argparse, sys; from gradhealth.cli import export; p = argparse.ArgumentParser(); "
            "export.add_arguments(p); p.parse_args(['r', '--to', 'mlflow']); "
            "print(sorted(m for m in ('torch', 'tensorboardX', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


FOLLOWED = """
import sys, time, warnings
import torch, torch.nn as nn
import gradhealth
warnings.simplefilter("ignore")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
time.sleep(0.3)                    # the follower starts before the store exists
with gradhealth.watch(model, opt, run_dir=sys.argv[1]) as w:
    for step in range(16):
        x = torch.randn(16, 8)
        if step == 5:
            x[0, 0] = float("nan")
        loss = model(x).pow(2).mean()
        w.observe(loss)
        opt.zero_grad(); loss.backward(); opt.step()
        time.sleep(0.05)
"""


def test_follow_writes_what_the_one_shot_export_writes(tmp_path):
    """The live writer, reading the store of a training in another process while it runs, ends
    with what to_tensorboard writes for the finished run (oracle): every scalar (NaN included),
    every histogram's count and sum, and every event line."""
    pytest.importorskip("tensorboardX")
    from gradhealth.integrations.export import follow_tensorboard, to_tensorboard

    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(FOLLOWED)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)])
    try:
        follow_tensorboard(run_dir, tmp_path / "live", interval=0.05,
                           stop=lambda: proc.poll() is not None and not run_dir.exists())
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    to_tensorboard(run_dir, tmp_path / "once")
    live, once = read_events(tmp_path / "live"), read_events(tmp_path / "once")
    assert set(live[0]) == set(once[0]) and len(once[0]) > 100
    for key, v in once[0].items():
        assert (math.isnan(v) and math.isnan(live[0][key])) or v == live[0][key], key
    assert any(math.isnan(v) for v in live[0].values())
    assert {k: (h.num, h.sum) for k, h in live[1].items()} == {k: (h.num, h.sum) for k, h in once[1].items()}

    def lines(texts):
        return sorted(line for (tag, _), items in texts.items() if tag.startswith("events") for t in items
                      for line in t.split("\n"))

    assert lines(live[2]) == lines(once[2]) and any("nonfinite" in x for x in lines(live[2]))


def test_follow_checks_its_interval(tmp_path):
    pytest.importorskip("tensorboardX")
    from gradhealth.errors import ParameterError
    from gradhealth.integrations.export import follow_tensorboard

    with pytest.raises(ParameterError, match="interval"):
        follow_tensorboard(tmp_path / "run", tmp_path / "tb", interval=0)


def test_cli_follow_on_a_finished_run_exports_it_and_returns(nan_run, tmp_path, capsys):
    """--follow on a run that is already finished: one pass, the one-shot content, exit 0;
    --follow with MLflow is a usage error."""
    pytest.importorskip("tensorboardX")
    from gradhealth.cli import export as cli_export
    from gradhealth.integrations.export import to_tensorboard

    run_dir, _ = nan_run
    assert cli_export.run(_args(run_dir=str(run_dir), logdir=str(tmp_path / "live"), follow=True,
                                interval=0.05)) == 0
    assert "export complete" in capsys.readouterr().out
    to_tensorboard(run_dir, tmp_path / "once")
    assert set(read_events(tmp_path / "live")[0]) == set(read_events(tmp_path / "once")[0])
    assert cli_export.run(_args(run_dir=str(run_dir), to="mlflow", follow=True)) == 2


def test_cli_follow_refuses_a_bad_interval(nan_run, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    from gradhealth.cli import main

    run_dir, _ = nan_run
    assert main(["export", str(run_dir), "--to", "tensorboard", "--follow", "--interval", "0",
                 "--logdir", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert "'interval'" in err and "--interval 2" in err and "Traceback" not in err
    assert not (tmp_path / "tb").exists()      # refused before anything was written


def test_cli_export_of_what_is_not_a_run_creates_nothing(nan_run, tmp_path, capsys, monkeypatch):
    """The TensorBoard writer was created before the run was read: exporting a missing folder,
    an empty one or a corrupt store exited 2 but left a ``tensorboard/`` folder of event files
    behind (the next try then said "has no run.sqlite" instead of "does not exist"); a file
    given as the run ended in a NotADirectoryError traceback. Oracle: the file system before
    and after."""
    pytest.importorskip("tensorboardX")
    from gradhealth.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.sqlite").write_bytes(b"not sqlite at all" * 10)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for target in ("missing", "empty", "afile.txt", "corrupt", ""):
        assert main(["export", target, "--to", "tensorboard"]) == 2, target
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err
    assert main(["export", str(nan_run[0]), "--to", "tensorboard", "--logdir", "afile.txt/tb"]) == 2
    err = capsys.readouterr().err
    assert "'logdir'" in err and "Fix:" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # the store file itself names the run: its folder holds the default logdir
    assert main(["export", str(nan_run[0] / "run.sqlite"), "--to", "tensorboard"]) == 0
    assert any((nan_run[0] / "tensorboard").iterdir())


def test_cli_mlflow_refusing_a_file_store_says_how_to_allow_it(nan_run, tmp_path, monkeypatch, capsys):
    """MLflow 3.7+ refuses a file: store unless MLFLOW_ALLOW_FILE_STORE is set; the CLI passed
    MLflow's long refusal on without a Fix line of its own."""
    mlflow = pytest.importorskip("mlflow")
    from gradhealth.cli import main

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    rc = main(["export", str(nan_run[0]), "--to", "mlflow", "--tracking-uri", (tmp_path / "mlruns").as_uri()])
    err = capsys.readouterr().err
    if rc == 0:   # (an MLflow that still takes a file store without being asked)
        pytest.skip(f"mlflow {mlflow.__version__} accepts the file store")
    assert rc == 2 and "Traceback" not in err
    assert "MLFLOW_ALLOW_FILE_STORE=true" in err.split("Fix:")[1]   # (our fix line, not only MLflow's text)
