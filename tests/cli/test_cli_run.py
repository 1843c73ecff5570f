"""`gradhealth run` on unmodified training scripts written to tmp_path."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gradhealth.cli import main
from gradhealth.store import load_run

HEALTHY = """
import json, sys
import torch, torch.nn as nn

torch.manual_seed(0)
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"argv": sys.argv, "name": __name__}, f)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(128, 8), torch.randn(128, 1)
for step in range(30):
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("trained", flush=True)
"""

# fc2 starts emitting inf at step 7: its weight is corrupted just before that step's forward.
NAN_AT_7 = """
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

def main():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for step in range(12):
        if step == 7:
            with torch.no_grad():
                net.fc2.weight[0, 0] = float("inf")
        loss = ((net(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

if __name__ == "__main__":
    main()
"""

RAISES = """
import torch, torch.nn as nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step == 3:
        raise ValueError("boom from the script at step 3")
"""


@pytest.fixture
def script(tmp_path):
    def write(name, text):
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p
    return write


def _nonfinite_events(events):
    return [e for e in events if e.kind == "nonfinite"]


def test_healthy_script_exits_0_without_alarm(script, tmp_path, capsys):
    p = script("healthy.py", HEALTHY)
    out_json = tmp_path / "argv.json"
    code = main(["run", "--run-dir", str(tmp_path / "run"), str(p), str(out_json), "--flag", "-x"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "trained" in captured.out and "healthy" in captured.err
    seen = json.loads(out_json.read_text())
    assert seen == {"argv": [str(p), str(out_json), "--flag", "-x"], "name": "__main__"}
    run = load_run(tmp_path / "run")
    assert run.finished and len(run.steps) == 30 and run.events == []
    assert {"0", "2"} <= {d["name"] for d in run.layers}
    losses = [s["loss"] for s in run.steps]
    assert all(v is not None for v in losses) and losses[-1] < losses[0]


def test_everything_is_restored_after_the_run(script, tmp_path, capsys):
    from torch.optim import optimizer as optim_mod

    backward, autograd_backward = torch.Tensor.backward, torch.autograd.backward
    pre, post = dict(optim_mod._global_optimizer_pre_hooks), dict(optim_mod._global_optimizer_post_hooks)
    argv, path = sys.argv[:], sys.path[:]
    main(["run", "--run-dir", str(tmp_path / "run"), str(script("h.py", HEALTHY))])
    assert torch.Tensor.backward is backward and torch.autograd.backward is autograd_backward
    assert optim_mod._global_optimizer_pre_hooks == pre and optim_mod._global_optimizer_post_hooks == post
    assert sys.argv == argv and sys.path == path


def test_nan_at_known_step_names_layer_and_step(script, tmp_path, capsys):
    code = main(["run", "--run-dir", str(tmp_path / "run"), str(script("nan.py", NAN_AT_7))])
    err = capsys.readouterr().err
    assert code == 1, err
    run = load_run(tmp_path / "run")
    evs = _nonfinite_events(run.events)
    assert evs, run.events
    first = min(evs, key=lambda e: (e.since if e.since is not None else e.step))
    assert (first.since if first.since is not None else first.step) == 7
    assert any(e.layer == "fc2" for e in evs), evs
    assert "first problem" in err and "fc2" in err


def test_no_fail_on_pathology(script, tmp_path, capsys):
    code = main(["run", "--no-fail-on-pathology", "--run-dir", str(tmp_path / "run"),
                 str(script("nan.py", NAN_AT_7))])
    assert code == 0


def test_script_exception_prints_its_traceback_and_exits_1(script, tmp_path, capsys):
    p = script("raises.py", RAISES)
    code = main(["run", "--run-dir", str(tmp_path / "run"), str(p)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "ValueError: boom from the script at step 3" in err
    assert str(p) in err and "runpy" not in err  # the script's frames, not ours
    assert len(load_run(tmp_path / "run").steps) == 4  # steps before the error were kept


def test_script_sys_exit_code_is_honoured(script, tmp_path, capsys):
    p = script("exit3.py", HEALTHY + "\nimport sys\nsys.exit(3)\n")
    assert main(["run", "--run-dir", str(tmp_path / "run"), str(p)]) == 3
    p = script("exit_msg.py", "import sys\nsys.exit('fatal: no data')\n")
    assert main(["run", "--run-dir", str(tmp_path / "run2"), str(p)]) == 1
    assert "fatal: no data" in capsys.readouterr().err


def test_module_form(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(textwrap.dedent(HEALTHY))
    monkeypatch.chdir(tmp_path)
    out_json = tmp_path / "argv.json"
    code = main(["run", "--run-dir", "run", "--every", "5", "-m", "mypkg.train", str(out_json)])
    assert code == 0, capsys.readouterr().err
    seen = json.loads(out_json.read_text())
    assert seen["name"] == "__main__" and seen["argv"][1:] == [str(out_json)]
    assert seen["argv"][0].endswith("train.py")
    steps = [s["step"] for s in load_run(tmp_path / "run").steps]
    assert set(range(0, 30, 5)) <= set(steps) and len(steps) < 30  # --every 5 reached the watcher


def test_script_not_found_and_unknown_module_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.py")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", "-m", "no_such_module_xyz"]) == 2
    assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "no script given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--every", "0", "x.py"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", "--on-nonfinite", "ignore", "x.py"])
    assert exc.value.code == 2


def test_end_to_end_subprocess(script, tmp_path):
    p = script("nan.py", NAN_AT_7)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "gradhealth", "run", "--run-dir", str(run_dir),
                           "--on-nonfinite", "skip", str(p)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "first problem" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "gradhealth", "summary", str(run_dir), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    s = json.loads(proc.stdout)
    assert s["first"]["kind"] == "nonfinite" and s["steps"]["skipped_steps"] >= 1


# ---------------------------------------------------------------- pieces: model discovery, status line

def test_find_models_picks_the_smallest_module_holding_all_parameters():
    from torch import nn

    from gradhealth.watch.session import find_models

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    wrapper = nn.ModuleDict({"inner": model})  # noqa: F841 - a second parent must not be chosen
    found, name = find_models(torch.optim.SGD(model.parameters(), lr=0.1))
    assert found is model and name == "model"
    head = model[2]
    found, _ = find_models(torch.optim.SGD(head.parameters(), lr=0.1))
    assert found is head


def test_find_models_with_two_separate_models_and_with_raw_tensors():
    from torch import nn

    from gradhealth.watch.session import find_models

    gen, disc = nn.Linear(3, 3), nn.Linear(3, 1)
    found, name = find_models(torch.optim.Adam([*gen.parameters(), *disc.parameters()]))
    assert isinstance(found, nn.ModuleDict) and dict(found.items()) == {"gen": gen, "disc": disc}
    assert name == "gen + disc"
    w = torch.zeros(3, requires_grad=True)
    found, why = find_models(torch.optim.SGD([w], lr=0.1))
    assert found is None and "nn.Module" in why


def test_status_line_renders_user_names_literally():
    from rich.console import Console

    from gradhealth.events import Event
    from gradhealth.report.run_view import StatusLine

    s = StatusLine("gradhealth train.py")
    s.update(step=12, loss=float("nan"), grad_norm=3.5,
             alarm=Event(11, "nonfinite", "enc.[bold]x[/bold]", "critical", "m"), n_alarms=2)
    con = Console(width=200, record=True, color_system=None)
    con.print(s)
    text = con.export_text()
    assert "step 12" in text and "loss nan" in text and "grad norm 3.5" in text
    assert "2 alarm(s)" in text and "nonfinite in enc.[bold]x[/bold] at step 11" in text


# ---------------------------------------------------------------- more shapes of training scripts

ACCUMULATE = """
import json, sys
import torch, torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
sums = []
for step in range(6):
    total = 0.0
    for micro in range(3):                      # gradient accumulation: 3 backward per step
        loss = model(torch.randn(16, 4)).pow(2).mean() / 3
        loss.backward()
        total += loss.item()
    opt.step()
    opt.zero_grad()
    sums.append(total)
json.dump(sums, open(sys.argv[1], "w"))
"""

TWO_MODELS = """
import torch, torch.nn as nn

torch.manual_seed(0)
gen = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
head_opt = torch.optim.SGD(disc[2].parameters(), lr=1e-3)   # a second optimizer of disc
for step in range(5):
    d_loss = disc(gen(torch.randn(8, 4)).detach()).mean() - disc(torch.randn(8, 4)).mean()
    opt_d.zero_grad(); d_loss.backward(); opt_d.step(); head_opt.step()
    g_loss = -disc(gen(torch.randn(8, 4))).mean()
    opt_g.zero_grad(); g_loss.backward(); opt_g.step()
"""


def test_gradient_accumulation_records_the_summed_loss(script, tmp_path, capsys):
    sums_file = tmp_path / "sums.json"
    code = main(["run", "--run-dir", str(tmp_path / "run"), str(script("acc.py", ACCUMULATE)),
                 str(sums_file)])
    assert code == 0, capsys.readouterr().err
    expected = json.loads(sums_file.read_text())
    got = [s["loss"] for s in load_run(tmp_path / "run").steps]
    assert got == pytest.approx(expected, rel=1e-5)


def test_two_models_and_a_second_optimizer(script, tmp_path, capsys):
    code = main(["run", "--run-dir", str(tmp_path / "run"), str(script("gan.py", TWO_MODELS))])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert "watching disc" in err and "watching gen" in err and "SGD too, for disc" in err
    first = load_run(tmp_path / "run")
    second = load_run(tmp_path / "run" / "optimizer1")
    assert {first.meta["model_name"], second.meta["model_name"]} == {"disc", "gen"}
    assert len(first.steps) == 5 and len(second.steps) == 5
    # each loss went to its own model's watcher, the first step's included
    assert all(s["loss"] is not None for s in first.steps + second.steps)
    assert all(s["loss"] < 0 for s in first.steps if first.meta["model_name"] == "disc")


def test_script_that_never_steps(script, tmp_path, capsys):
    p = script("nostep.py", "import torch\nprint('no training here')\n")
    assert main(["run", "--run-dir", str(tmp_path / "run"), str(p)]) == 0
    assert "nothing was watched" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(script, tmp_path, capsys):
    p = script("ctrlc.py", HEALTHY + "\nraise KeyboardInterrupt\n")
    assert main(["run", "--run-dir", str(tmp_path / "run"), str(p)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_run(tmp_path / "run").finished  # what was watched is still closed cleanly


def test_on_nonfinite_raise_stops_the_script_with_the_diagnosis(script, tmp_path, capsys):
    code = main(["run", "--on-nonfinite", "raise", "--run-dir", str(tmp_path / "run"),
                 str(script("nan.py", NAN_AT_7))])
    err = capsys.readouterr().err
    assert code == 1  # the script's error (not a usage error: exit 2), shown with its traceback
    assert "NonFiniteError" in err and "Traceback" in err
    assert "first problem: nonfinite in fc2 at step 7" in " ".join(err.split())
    assert len(load_run(tmp_path / "run").steps) == 8


def test_on_nonfinite_choices_are_the_watch_configs():
    """The CLI lists the policies without importing torch; they must be WatchConfig's."""
    from gradhealth.cli.run import _GUARDS
    from gradhealth.watch.config import ON_NONFINITE_CHOICES

    assert sorted(_GUARDS) == sorted(ON_NONFINITE_CHOICES)
