"""``gradhealth summary`` at 80 columns: the "worst layers" table fits and its layers can be told
apart (before, every row read ``transformer_encoder.layers.…``).

Oracle: the diagnosis as data (``summarize(...)["worst_layers"]``): the table's layer cells,
their lines joined, must give back each stored name whole, and each row its kinds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.cells import cell_len

from gradhealth._text import safe_text
from gradhealth.events import Event
from gradhealth.report.run_view import summarize
from gradhealth.store import RunStore, load_run

GRADHEALTH = [sys.executable, "-m", "gradhealth"]
NAMES = [f"transformer_encoder.layers.{i}.self_attention.out_proj" for i in range(12)]
HOSTILE = "esc\x1b[2Jclear"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("summary_width") / "synth"
    names = NAMES + [HOSTILE]
    with RunStore(run_dir, flush_every=0.05) as store:
        store.write_layers([{"index": i, "name": n, "type": "Linear", "n_params": 10} for i, n in enumerate(names)])
        store.append_steps([{"step": s, "loss": 1.0, "global_grad_norm": 1.0} for s in range(3)])
        store.append_layer_stats([{"step": s, "layer": i, "grad_norm": 1.0 + i}
                                  for s in range(3) for i in range(len(names))])
        evs = [Event(step=1, kind="dead_units", layer=NAMES[i], severity="warning", message="dead units",
                     remedy="gradhealth.remedies.he_(model)") for i in (3, 7, 11)]
        evs += [Event(step=2, kind=k, layer=HOSTILE, severity="error", message="m") for k in ("vanishing", "nonfinite")]
        store.append_events(evs)
    return run_dir


def _summary(run_dir, columns):
    env = dict(os.environ, COLUMNS=str(columns))
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([*GRADHEALTH, "summary", str(run_dir)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1, out.stderr
    return out.stdout.splitlines()


def _rows(lines):
    """The body rows of the "worst layers" table: per row, its cells' lines joined by "\\n"."""
    start = next(i for i, line in enumerate(lines) if line.startswith("worst layers"))
    rows: list[list[list[str]]] = []
    new_row = True
    for line in lines[start + 1:]:
        if line.startswith(("└", "┗")):
            break
        if line.startswith(("├", "┡")):
            new_row = True
            continue
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if new_row or cells[1]:  # a row's first line has its severity; its other lines do not
            rows.append([[c] for c in cells])
            new_row = False
        else:
            for col, c in zip(rows[-1], cells):
                col.append(c)
    return [["\n".join(x for x in col if x) for col in row] for row in rows]


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_worst_layers_fit_and_keep_every_name(synth, columns):
    lines = _summary(synth, columns)
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("worst layers")):]
    table = table[:next(i for i, line in enumerate(table) if line.startswith(("└", "┗"))) + 1]
    assert max(cell_len(line) for line in table) <= columns
    worst = summarize(load_run(synth, layer_stats=False))["worst_layers"]
    rows = _rows(lines)
    assert len(rows) == len(worst)
    for d, row in zip(worst, rows):
        assert row[0].replace("\n", "") == safe_text(d["layer"]), (d["layer"], row[0])
        assert row[1] == d["worst_severity"] and row[2] == str(d["events"])
        assert row[3].replace("\n", " ") == ", ".join(f"{k} x{v}" for k, v in d["kinds"].items())
    assert len({r[0] for r in rows}) == len(rows)
    assert "\x1b" not in "".join(lines)


def test_a_wide_terminal_keeps_one_line_per_layer(synth):
    lines = _summary(synth, 200)
    for name in NAMES[3::4]:
        assert any(name in line for line in lines)
