"""80 columns (issue 10, item 5): the probe's and the events' tables fit the terminal, and code
and numbers fold at token boundaries only.

Oracle: the rendered text itself, cut back into its table cells at the box characters; each
cell's lines joined must give back the original string (no character cropped), with the same
identifiers and numbers (none split across lines).
"""

import re

import pytest
import torch
from rich.console import Console
from torch import nn

from gradhealth.events import Event
from gradhealth.probe import probe
from gradhealth.report.run_view import events_table

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")
CODE = "gradhealth.remedies.replace_activation_(model, 'sigmoid', 'relu'); gradhealth.remedies.he_(model)"


def _render(renderable, width):
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def _columns(text, title):
    """The cells of the table under ``title``: one list of column strings per row (lines of a
    cell joined with newlines); a row starts where the first column is not empty."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("│") and not line.startswith("┃"):
            if line.startswith(("└", "┗")) or line[:1] not in "┏┡├┢━─":
                if rows or line.startswith(("└", "┗")):
                    break
            continue
        if line.startswith("┃"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0] or not rows:
            rows.append([[c] for c in cells])
        else:
            for col, c in zip(rows[-1], cells):
                col.append(c)
    return [["\n".join(x for x in col if x) for col in row] for row in rows]


def _same(original, cell):
    flat = re.sub(r"\s+", "", original)
    assert flat in re.sub(r"\s+", "", cell), (original, cell)
    assert _IDENT.findall(original) == _IDENT.findall(cell), (original, cell)
    for n in _NUMBER.findall(original):
        assert re.search(r"(?<![\d.])" + re.escape(n) + r"(?![\d])", cell), (n, cell)


@pytest.fixture(scope="module")
def sick():
    torch.manual_seed(0)
    layers = []
    for _ in range(29):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    net = nn.Sequential(nn.Linear(16, 16), nn.Sigmoid(), *layers, nn.Linear(16, 4))
    return probe(net, torch.randn(64, 16), jacobian=False)


@pytest.mark.parametrize("width", [80, 120])
def test_probe_tables_fit_and_fold_at_tokens(sick, width):
    text = _render(sick, width)
    assert max(len(line) for line in text.splitlines()) <= width
    rows = _columns(text, "prescriptions")
    assert len(rows) == len(sick.prescriptions)
    for p, row in zip(sick.prescriptions, rows):
        _, change, code, why = row
        _same(p.code, code)
        _same(p.reason, why)
        _same(p.action, change)
    assert any("replace_activation_" in p.code for p in sick.prescriptions)


@pytest.mark.parametrize("width", [80, 120])
def test_events_table_fits_and_folds_code_at_tokens(width):
    msg = ("vanishing: the backward signal shrinks x0.141 per layer towards the input "
           "(x2.12e-42 over 50 layers); at encoder.layers.0.linear1 it is 1.92e-42x its size")
    evs = [Event(step=120, kind="vanishing", layer="encoder.layers.0.linear1", severity="error",
                 message=msg, evidence={}, remedy=CODE, since=100)]
    text = _render(events_table(evs, width=width), width)
    assert max(len(line) for line in text.splitlines()) <= width
    # one event: each column's lines, top to bottom
    body = [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│")]
    joined = "\n".join("\n".join(row[k] for row in body if row[k]) for k in range(len(body[0])))
    assert re.sub(r"\s+", "", CODE) in re.sub(r"\s+", "", joined)
    for ident in _IDENT.findall(CODE):
        assert re.search(r"(?<![A-Za-z0-9_])" + ident + r"(?![A-Za-z0-9_])", joined), ident
    for n in _NUMBER.findall(msg):
        assert re.search(r"(?<![\d.])" + re.escape(n) + r"(?![\d])", joined), n
