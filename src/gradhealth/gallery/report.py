"""The demo's closing page: HTML reports of the gallery's own runs and probes, linked together.

It reuses what the sections already computed (their results are cached), so it costs a few
renders, not another round of training: the broken and the healthy watched run of the watch
section, the sigmoid probe before and after the fix of the probe section, and the cure
report: the same broken sigmoid MLP after its top prescription was applied (one more probe).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_reports"]


def write_reports(out_dir: str | Path, gallery_index: Path | None = None) -> Path:
    """Write ``out_dir/report/index.html`` and one report per run/probe; return the index path."""
    from ..report import Report, write_demo_report
    from . import probe as probe_section
    from . import watch as watch_section

    broken_run, _ = watch_section._train(True)
    healthy_run, _ = watch_section._train(False)
    sig_broken, sig_fixed, _ = probe_section._results()["sigmoid"]
    items = [("watched_run_broken", Report.from_run(broken_run)),
             ("watched_run_healthy", Report.from_run(healthy_run)),
             ("probe_sigmoid_before_cure", Report.from_probe(sig_broken)),
             ("probe_relu_he_after_cure", Report.from_probe(sig_fixed)),
             ("cure_sigmoid_before_after", _cure(sig_broken))]
    links = [("the gallery (every picture, explained)", "../index.html")] if gallery_index else []
    return write_demo_report(Path(out_dir) / "report", items, links=links,
                             title="gradhealth demo: what went wrong, where, and what fixed it")


def _cure(before):
    """The cure report of the probe section's sigmoid MLP: its top prescription that changes
    the model, applied in place to a fresh copy, then probed again (as ``gradhealth cure``)."""
    import torch

    from ..probe import probe
    from ..remedies.prescribe import applies_to_model, apply_prescription
    from ..report import Report
    from . import probe as probe_section

    model, x = probe_section._mlp(20, "sigmoid", "default")
    chosen = [p for p in before.prescriptions if applies_to_model(p)][:1]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        for p in chosen:
            apply_prescription(p, model, x)
        after = probe(model, x, jacobian=False)
    finally:
        torch.random.set_rng_state(state)
    return Report.from_cure(before, after, chosen)
