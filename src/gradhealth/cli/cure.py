"""``gradhealth cure``: probe, apply the top prescription to a copy, probe again, compare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._common import seed_int

HELP = "apply the top prescription to a copy of a model and show the before/after probe"
DESCRIPTION = """Probe a model, apply its top prescription(s) that change the model itself
(re-initialisation, activation swap) to a copy, probe the copy, and print both side by side.

TARGET is FILE.py:FACTORY or package.module:FACTORY, as for `gradhealth probe`: FACTORY()
returns a model or a (model, inputs) pair. Training-time remedies (clipping, skipping
non-finite steps, learning-rate changes) and architecture changes are listed, not applied.

Examples:
  gradhealth cure examples/cure_tanh.py:make_model
  gradhealth cure mypkg.models:build --input-shape 32,784 --save cured.pt
  gradhealth cure mypkg.models:build --input-shape 32,784 --top 2 --json

--save FILE writes the cured copy's state_dict (torch.save); load it into the same
architecture with model.load_state_dict(torch.load(FILE)).

Exit code: 0 the cured copy is healthy (or the model already was), 1 a pathology remains,
2 usage error.
"""

_OWNER = "gradhealth cure"


def add_arguments(parser) -> None:
    """Add TARGET (as for ``gradhealth probe``), ``--top``, ``--seed``, ``--save`` and ``--json``."""
    from .probe import add_target_arguments

    add_target_arguments(parser, loss_help="loss the probe differentiates (default: surrogate)")
    parser.add_argument("--top", type=int, default=1, metavar="N",
                        help="apply the first N applicable prescriptions, in rank order (default 1)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed for the inputs, the probe and the re-initialisation")
    parser.add_argument("--save", metavar="FILE", help="write the cured copy's state_dict here")
    parser.add_argument("--json", action="store_true", help="print before/after as JSON")


_MAX_ROWS = 40  # above this, the table keeps the first/last layers and every flagged one


def comparison_rows(before, after) -> list[tuple[str, str, str, str, str, str]]:
    """(layer, type, gain before, gain after, verdict before, verdict after) per layer, then
    one row per recurrent time series (gain = growth per time step)."""
    from ..report.probe_view import fmt as _fmt

    rows = []
    after_layers = {lr.name: lr for lr in after.layers}
    for lb in before.layers:
        la = after_layers.get(lb.name)
        rows.append((lb.name, lb.type, _fmt(lb.gain), _fmt(la.gain if la else None), lb.verdict,
                     la.verdict if la else "-"))
    after_ts = {(t.layer, t.kind): t for t in after.recurrent}
    for tb in before.recurrent:
        ta = after_ts.get((tb.layer, tb.kind))
        rows.append((f"{tb.layer} (per time step)", tb.kind, _fmt(tb.growth_per_step),
                     _fmt(ta.growth_per_step if ta else None), tb.verdict, ta.verdict if ta else "-"))
    return rows


@dataclass
class _Outcome:
    """What ``gradhealth cure`` did: the probes before and after, the prescriptions applied and
    not applied, and what each applied call returned."""

    before: Any
    after: Any
    chosen: list
    others: list
    summaries: list


def run(args) -> int:
    """Probe TARGET, apply its top ``--top`` model-changing prescriptions to a copy, probe the
    copy, save it (``--save``) and print the comparison; the exit code is 0 when the copy (or
    the model already) is healthy, 1 when a pathology remains."""
    import copy

    import torch

    from ..errors import ParameterError
    from ..probe import probe
    from ..remedies.prescribe import applies_to_model, apply_prescription
    from ._common import print_json
    from .probe import load_target

    if args.top < 1:
        raise ParameterError("top", _OWNER, "an integer >= 1", args.top, "pass --top 1 (the default).")
    if args.save is not None:
        import os
        from pathlib import Path

        if not args.save.strip() or os.path.isdir(args.save):
            raise ParameterError("save", _OWNER, "a file path (not blank, not a directory)", args.save,
                                 "pass e.g. --save cured.pt.")
        parent = Path(args.save).expanduser().resolve().parent
        if not parent.is_dir():  # say so before minutes of probing, not after
            raise ParameterError("save", _OWNER, "a file path in an existing directory", args.save,
                                 f"create {str(parent)!r} first, or save elsewhere.")
    model, inputs, target = load_target(args, _OWNER)

    def run_probe(m):
        return probe(m, inputs, target=target, loss_fn=args.loss, seed=args.seed, jacobian=False)

    before = run_probe(model)
    chosen = [p for p in before.prescriptions if applies_to_model(p)][: args.top]
    others = [p for p in before.prescriptions if p not in chosen]
    cured = copy.deepcopy(model)
    summaries = []
    torch.manual_seed(args.seed)
    for p in chosen:
        summaries.extend(apply_prescription(p, cured, inputs))
    after = run_probe(cured) if chosen else before
    res = _Outcome(before, after, chosen, others, summaries)

    if args.save is not None:
        _save(args.save, cured, res)

    if args.json:
        print_json({"before": before.to_dict(), "after": after.to_dict(),
                    "applied": [p.to_dict() for p in chosen],
                    "changes": [s.to_dict() if hasattr(s, "to_dict") else s for s in summaries],
                    "not_applied": [p.to_dict() for p in others], "saved": args.save})
        return 0 if after.healthy else 1
    return _print_text(res, args.save)


def _save(path: str, cured, res: _Outcome) -> None:
    """``torch.save`` the cured copy's state_dict; a usage error when nothing was applied or
    the file cannot be written."""
    import torch

    from ..errors import ParameterError

    if not res.chosen:
        raise ParameterError("save", _OWNER, "used when a prescription was applied", path,
                             f"the model is {res.before.verdict} and no prescription changes it; nothing to save.")
    try:
        torch.save(cured.state_dict(), path)
    except (OSError, RuntimeError) as exc:  # torch.save: RuntimeError for a missing directory
        why = getattr(exc, "strerror", None) or "it cannot be written"
        raise ParameterError("save", _OWNER, "a writable file path in an existing directory", path,
                             f"choose another path ({why}).") from None


def _print_text(res: _Outcome, saved: str | None) -> int:
    """The terminal report: verdicts, what was applied and why, the per-layer table, what was
    not changed, the other prescriptions; returns the exit code."""
    from ._common import console

    out = console()
    before, after = res.before, res.after
    if before.healthy:
        out.print(f"verdict: healthy -- nothing to cure ({len(before.layers)} layers probed).")
        return 0
    if not res.chosen:
        out.print(f"verdict: {before.verdict}. None of the prescriptions changes the model itself; "
                  "apply them in your training loop or code:")
        for p in before.prescriptions:
            out.print(f"  {p.rank}. {p.code}\n     {p.reason}", markup=False, highlight=False)
        return 1
    out.print(f"verdict before: {before.verdict}    after: {after.verdict}")
    for p in res.chosen:
        out.print(f"applied (rank {p.rank}): {p.code}", markup=False, highlight=False)
        out.print(f"  why: {p.reason}", markup=False, highlight=False)
    out.print(_table(comparison_rows(before, after)))
    for s in res.summaries:
        if hasattr(s, "unmatched") and s.unmatched:
            for name, why in s.unmatched:
                out.print(f"not changed: {name}: {why}", markup=False, highlight=False)
        if isinstance(s, dict):  # replace_activation_
            out.print("architecture changed: " + ", ".join(f"{k}: {v}" for k, v in s.items())
                      + " (a saved state_dict needs the same change in your model code)",
                      markup=False, highlight=False)
    if res.others:
        out.print("other prescriptions (training loop, code, or instead of the applied one):")
        for p in res.others[:4]:
            out.print(f"  {p.rank}. {p.code}", markup=False, highlight=False)
    if saved:
        out.print(f"saved the cured state_dict to {saved}")
    return 0 if after.healthy else 1


def _table(rows: list):
    """The before/after rich Table; long ones keep the first and last 10 rows and every layer
    whose verdict changed from a pathology."""
    from rich.table import Table

    table = Table(title="backward gain per layer (1 at the output), before -> after", title_justify="left")
    for col in ("layer", "type", "gain before", "gain after", "verdict before", "verdict after"):
        table.add_column(col, justify="right" if col.startswith("gain") else "left")
    keep = range(len(rows))
    if len(rows) > _MAX_ROWS:
        keep = [i for i, r in enumerate(rows)
                if i < 10 or i >= len(rows) - 10 or r[4] != "healthy" and r[4] != r[5]]
        keep = keep if len(keep) <= 2 * _MAX_ROWS else list(range(10)) + list(range(len(rows) - 10, len(rows)))
    last = -1
    for i in keep:
        if i != last + 1:
            table.add_row(f"... {i - last - 1} more", "", "", "", "", "")
        table.add_row(*rows[i])
        last = i
    return table
