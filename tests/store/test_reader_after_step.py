"""load_run(after_step=k) reads the steps after k (steps rows, per-layer rows, time series) and
the rest in full: what the live exports read each time. Oracle: the full read, filtered."""

from __future__ import annotations

import math

import pytest

from gradhealth.errors import ParameterError
from gradhealth.store import RunStore, load_run


def _same(a, b):
    return all((isinstance(v, float) and math.isnan(v) and math.isnan(b[k])) or v == b[k] for k, v in a.items())


def test_after_step_is_the_full_read_filtered(tmp_path):
    run_dir = tmp_path / "run"
    with RunStore(run_dir) as st:
        st.write_meta({"model": "M"})
        st.write_layers([{"index": i, "name": f"l{i}", "type": "Linear", "n_params": 4} for i in range(3)])
        st.append_steps([{"step": s, "loss": math.nan if s == 7 else 1.0 / (s + 1)} for s in range(12)])
        st.append_layer_stats([{"step": s, "layer": i, "grad_norm": 0.1 * s + i,
                                **({"time_grad": [1.0, 0.5, math.inf]} if i == 2 and s % 4 == 0 else {})}
                               for s in range(12) for i in range(3)])
    full, part = load_run(run_dir), load_run(run_dir, after_step=5)
    assert [r["step"] for r in part.steps] == list(range(6, 12))
    want = [r for r in full.steps if r["step"] > 5]
    assert all(_same(a, b) for a, b in zip(part.steps, want)) and len(part.steps) == len(want)
    assert part.layer_stats == [r for r in full.layer_stats if r["step"] > 5]
    assert [(t["step"], t["layer"]) for t in part.time_grads] == [(8, 2)]
    assert part.layers == full.layers and part.meta == full.meta and len(part.events) == len(full.events)
    assert load_run(run_dir, after_step=-1).layer_stats == full.layer_stats
    with pytest.raises(ParameterError, match="after_step"):
        load_run(run_dir, after_step="5")
