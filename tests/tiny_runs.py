"""A finished three-layer, four-step run store written directly (no training): what the CLI
tests of ``top`` and ``report`` read."""

from __future__ import annotations

from gradhealth.store import RunStore


def finished_run(run_dir):
    """Write the run into ``run_dir`` (layers fc0..fc2, steps 0..3) and return ``run_dir``."""
    with RunStore(run_dir, flush_every=0.05) as store:
        store.write_layers([{"index": i, "name": f"fc{i}", "type": "Linear", "n_params": 4} for i in range(3)])
        store.append_steps([{"step": s, "loss": 1.0 / (s + 1), "global_grad_norm": 0.5} for s in range(4)])
        store.append_layer_stats([{"step": s, "layer": i, "grad_norm": 10.0 ** -i}
                                  for s in range(4) for i in range(3)])
    return run_dir
