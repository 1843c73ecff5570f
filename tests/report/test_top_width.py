"""``gradhealth top`` at 80 columns: every event line fits, is cut with an ellipsis, and the
layers stay tell-apart-able.

Oracle: the events as stored (read back with ``load_run``), not the rendered text: each event
must be found, in order, as its step, severity and kind, a layer that is the stored name or a
head…tail of it, and a message that is the stored message or a prefix of it followed by "…".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from rich.cells import cell_len

from gradhealth._text import safe_text
from gradhealth.events import Event
from gradhealth.store import RunStore, load_run

GRADHEALTH = [sys.executable, "-m", "gradhealth"]
LONG = [f"transformer_encoder.layers.{i}.self_attention_output_projection" for i in range(12)]
HOSTILE = "esc\x1b[2Jclear"
_PREFIX = re.compile(r"^  +(-|\d+) (\S+) +(\S+) +")


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("top_width") / "run"
    names = LONG + [HOSTILE, "fc"]
    words = " ".join(f"word{k}" for k in range(40))
    with RunStore(run_dir, flush_every=0.05) as store:
        store.write_layers([{"index": i, "name": n, "type": "Linear", "n_params": 4} for i, n in enumerate(names)])
        store.append_steps([{"step": s, "loss": 1.0, "global_grad_norm": 0.5} for s in range(3)])
        store.append_layer_stats([{"step": s, "layer": i, "grad_norm": 1.0 + i}
                                  for s in range(3) for i in range(len(names))])
        store.append_events([
            Event(step=0, kind="vanishing", layer=LONG[3], severity="error", message=f"shrinks {words}"),
            Event(step=1, kind="update_ratio", layer=LONG[7], severity="warning", message=f"grows {words}"),
            Event(step=1, kind="nonfinite", layer=None, severity="error", message=f"NaN in {words}"),
            Event(step=2, kind="dead_units", layer=HOSTILE, severity="critical", message=f"dead\n{words}"),
            Event(step=2, kind="saturated", layer="fc", severity="warning", message="short"),
            Event(step=2, kind="vanishing", layer=LONG[11], severity="warning", message="tiny"),
        ])
    return run_dir


def _frame(run_dir, columns):
    env = dict(os.environ, COLUMNS=str(columns))
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([*GRADHEALTH, "top", str(run_dir), "--once"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _groups(lines):
    """The event lines after "newest events:", one list per event (continuations indented)."""
    body = lines[lines.index("newest events:") + 1:]
    groups: list[list[str]] = []
    for line in body:
        if line.startswith(" " * 11) and groups:
            groups[-1].append(line.strip())
        else:
            assert _PREFIX.match(line), f"not an event line (an orphan fragment?): {line!r}"
            groups.append([line])
    return groups


def _shown_as(full: str, shown: str) -> bool:
    """``shown`` is ``full``, or a head…tail of it."""
    if shown == full:
        return True
    head, sep, tail = shown.partition("…")
    return bool(sep) and full.startswith(head) and full.endswith(tail) and len(shown) < len(full)


@pytest.mark.parametrize("columns", [80, 100, 60])
def test_event_lines_fit_and_match_the_stored_events(long_run, columns):
    lines = _frame(long_run, columns)
    assert all(cell_len(line) <= columns for line in lines), [line for line in lines if cell_len(line) > columns]
    assert "\x1b" not in "".join(lines)
    events = load_run(long_run).events
    groups = _groups(lines)
    assert len(groups) == len(events)
    shown_layers = []
    for ev, group in zip(events, groups):
        first = group[0]
        m = _PREFIX.match(first)
        assert (m.group(1), m.group(2), m.group(3)) == (str(ev.step), ev.severity, ev.kind)
        rest = first[m.end():]
        name = safe_text(ev.layer) if ev.layer is not None else "(model)"
        message = safe_text(ev.message)
        if len(group) == 1:
            shown_name, _, shown_msg = rest.partition(" ")
            if not _shown_as(name, shown_name):  # a name with spaces: "(model)" has none
                shown_name, shown_msg = rest[:len(name)], rest[len(name) + 1:]
        else:
            assert len(group) == 2
            shown_name, shown_msg = rest, group[1]
        assert _shown_as(name, shown_name), (name, shown_name)
        assert shown_msg == message or (shown_msg.endswith("…") and message.startswith(shown_msg[:-1])), \
            (message, shown_msg)
        shown_layers.append(shown_name)
    # at 80 columns and more, distinct layers stay distinct on screen (a shared head is cut,
    # the index kept); narrower, a name may be cut to its leaf
    if columns < 80:
        return
    stored = [e.layer for e in events]
    for i in range(len(events)):
        for j in range(len(events)):
            if stored[i] is not None and stored[j] is not None and stored[i] != stored[j]:
                assert shown_layers[i] != shown_layers[j], (stored[i], stored[j], shown_layers[i])


def test_short_events_stay_whole_on_one_line(long_run):
    groups = _groups(_frame(long_run, 80))
    assert any(g == [g[0]] and g[0].rstrip().endswith("fc short") for g in groups)


def test_middle_keeps_the_tail():
    from gradhealth.cli.top import middle

    name = "transformer_encoder.layers.2.linear1"
    for width in range(1, len(name) + 3):
        cut = middle(name, width)
        assert cell_len(cut) <= width and (cut == name or _shown_as(name, cut) or cut == "…"[:width])
    assert middle(name, 30).endswith("layers.2.linear1") and middle(name, 30).startswith("transform")
    assert cell_len(middle("层" * 40, 21)) <= 21
