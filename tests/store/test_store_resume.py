"""A resumed run appends to its run store (issue 13): RunStore.truncate + mode='a', and a watcher
created under appending_store() that loads the checkpoint's state. Oracle: the same rows written,
or the same training run, without the interruption; the readers (load_run, the summary of
`gradhealth summary`) must see one continuous run."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

from gradhealth.events import Event
from gradhealth.store import RunStore, load_run

STEPS, CKPT, STOPPED = 12, 5, 9


def _rows(step):
    """The rows a watcher would write at ``step``: generated, NaN/Inf included, a time series."""
    rng = np.random.default_rng(step)
    loss = float("nan") if step == 7 else float(rng.random())
    row = {"step": step, "loss": loss, "global_grad_norm": float(rng.random()), "skipped": step == 7}
    layers = [{"step": step, "layer": i, "grad_norm": float("inf") if (step, i) == (8, 1) else float(rng.random()),
               "nonfinite": int(step == 7)} for i in range(3)]
    layers.append({"step": step, "layer": 3, "time_grad": rng.random(4).tolist()})
    events = [Event(step=step, kind="nonfinite", layer="fc1", severity="error", message=f"at {step}")] \
        if step in (3, 7) else []
    return row, layers, events


def _write(store, steps):
    store.write_layers([{"index": i, "name": f"fc{i}", "type": "Linear", "n_params": 10} for i in range(4)])
    for s in steps:
        row, layers, events = _rows(s)
        store.append_steps([row])
        store.append_layer_stats(layers)
        store.append_events(events)


def _same(got, want):
    assert [r["step"] for r in got.steps] == [r["step"] for r in want.steps]
    for a, b in zip(got.steps, want.steps):
        assert {k: v for k, v in a.items() if k != "time"} == pytest.approx(
            {k: v for k, v in b.items() if k != "time"}, nan_ok=True)
    assert len(got.layer_stats) == len(want.layer_stats)
    for a, b in zip(got.layer_stats, want.layer_stats):
        assert a == pytest.approx(b, nan_ok=True)
    assert [(t["step"], t["layer"], t["norms"].tolist()) for t in got.time_grads] == \
        [(t["step"], t["layer"], t["norms"].tolist()) for t in want.time_grads]
    assert [(e.step, e.kind, e.layer, e.message) for e in got.events] == \
        [(e.step, e.kind, e.layer, e.message) for e in want.events]


def test_truncate_then_append_equals_the_uninterrupted_store(tmp_path):
    with RunStore(tmp_path / "oracle") as s:
        _write(s, range(STEPS))
    with RunStore(tmp_path / "run") as s:       # interrupted after step 8; checkpoint at 5
        _write(s, range(STOPPED))
    with RunStore(tmp_path / "run", mode="a") as s:
        s.truncate(CKPT)
        _write(s, range(CKPT, STEPS))
    got, want = load_run(tmp_path / "run"), load_run(tmp_path / "oracle")
    _same(got, want)
    assert "resumed_at" in got.meta and got.finished
    # the negative control: appending without the truncation doubles the re-done step 7's event
    with RunStore(tmp_path / "doubled") as s:
        _write(s, range(STOPPED))
    with RunStore(tmp_path / "doubled", mode="a") as s:
        _write(s, range(CKPT, STEPS))
    assert [e.step for e in load_run(tmp_path / "doubled").events] == [3, 7, 7]


torch = pytest.importorskip("torch")
nn = torch.nn


def _train(w, model, opt, data, steps, save_at=None):
    """SGD on ``data``, a NaN in fc1's output at step 7; returns the checkpoint taken after step
    ``save_at`` (model, optimizer, watcher state) if asked."""
    ckpt = None
    for s in steps:
        x, y = data[s]
        out = model[0](x)
        if s == 7:
            out = out.clone()
            out[0, 0] = float("nan")
        loss = nn.functional.mse_loss(model[2](model[1](out)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.observe(loss)
        if s == save_at:
            ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "watch": w.state_dict()})
    return ckpt


def _fresh():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def test_a_resumed_watcher_continues_its_run_store(tmp_path):
    import gradhealth
    from gradhealth.report.run_view import summarize
    from gradhealth.watch.runlog import appending_store

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)) for _ in range(STEPS)]
    opts = {"on_nonfinite": "skip", "detail_every": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt = _fresh()
        with gradhealth.watch(model, opt, run_dir=tmp_path / "oracle", **opts) as w:
            _train(w, model, opt, data, range(STEPS))
        model, opt = _fresh()
        with gradhealth.watch(model, opt, run_dir=tmp_path / "run", **opts) as w:
            ckpt = _train(w, model, opt, data, range(STOPPED), save_at=CKPT)   # stops after step 8
        model, opt = _fresh()
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        with appending_store():
            w2 = gradhealth.watch(model, opt, run_dir=tmp_path / "run", **opts)
        with w2:
            w2.load_state_dict(ckpt["watch"])
            _train(w2, model, opt, data, range(CKPT + 1, STEPS))
    got, want = load_run(tmp_path / "run"), load_run(tmp_path / "oracle")
    _same(got, want)
    assert any(e.step == 7 and e.kind == "nonfinite" for e in want.events)
    assert got.meta["resumed_from_step"] == CKPT + 1
    for key in ("steps", "skipped_steps", "n_events"):
        assert got.meta[key] == want.meta[key], key
    assert want.meta["n_events"] == len(want.events)
    # what `gradhealth summary` shows: the same diagnosis
    a, b = summarize(got), summarize(want)
    for k in set(a) | set(b):
        if k not in ("run_dir", "duration", "started", "meta"):
            assert a.get(k) == b.get(k) or (isinstance(a.get(k), float) and math.isnan(a[k]) and math.isnan(b[k])), k
