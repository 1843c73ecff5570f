"""From the numbers read back after the passes to a :class:`ProbeResult` (internal).

Input: the layer slots (names, types, call shapes), structural facts read from the modules,
and one nested structure of plain floats (``vals``, see ``core._measured``). Nothing here
touches a tensor's data: every verdict is a function of those floats, so the rules can be
checked on hand-made numbers (``_analysis``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.nn as nn

from . import _analysis as A
from .recurrent import spectral_radius
from .result import VERDICT_ORDER, LayerReport, MeanFieldCheck, ProbeResult, ResidualBlock, ResidualSummary, TimeSeries

_SEVERITY_ORDER = ("critical", "error", "warning", "info")


@dataclass
class Row:
    """One layer's numbers, as floats (``None``: not measured)."""

    i: int
    name: str
    type: str
    module: nn.Module
    calls: int
    shape: tuple
    numel: int
    gain: float | None
    gsc: float | None
    call_gains: list
    out_mean: float | None
    out_std: float | None
    out_nonfinite: int
    act: str | None
    act_zero: float | None
    act_dead: float | None
    act_sat: float | None
    gnorm: float | None
    wnorm: float | None
    out_grad: float | None
    grad_nonfinite: bool
    same_shapes: bool = True
    ratio: float | None = None
    growth: float | None = None


class _Verdicts:
    """Per-layer verdicts; a more severe verdict replaces a milder one, never the reverse."""

    def __init__(self, n: int):
        self.kind = ["healthy"] * n
        self.evidence: list[dict] = [{} for _ in range(n)]

    def mark(self, i: int, kind: str, evidence: dict) -> None:
        if VERDICT_ORDER.index(kind) < VERDICT_ORDER.index(self.kind[i]):
            self.kind[i], self.evidence[i] = kind, evidence


@dataclass
class Context:
    """Everything :func:`assemble` needs besides the rows."""

    structure: list
    names: dict
    folded: dict
    unused: list
    residual_struct: list
    w_sq: float
    out_norm: float
    global_gnorm: float | None
    thresholds: A.Thresholds
    notes: list = field(default_factory=list)
    model_info: dict = field(default_factory=dict)


def _mean_sq(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def make_rows(slots, vals, layer_got, ctx: Context) -> list[Row]:
    rows = []
    for i, s in enumerate(slots):
        lv = vals["layers"][i]
        calls = lv["calls"]
        # A module called several times (a recurrent cell, shared weights) is placed in the
        # depth chain by its last call, the one nearest the output; its per-call gains form a
        # series of their own.
        last = calls[-1]
        call_gains = []
        for c in calls:
            sq = _mean_sq(c["probe_sq"])
            call_gains.append(math.sqrt(sq / ctx.w_sq) if sq is not None and ctx.w_sq > 0 else None)
        sq_last = _mean_sq(last["probe_sq"])
        gain = call_gains[-1]
        gsc = None
        if sq_last is not None and last["numel"] and ctx.out_norm > 0:
            gsc = math.sqrt(sq_last / last["numel"]) * math.sqrt(last["out_sq"] or 0.0) / ctx.out_norm
        loss_sq = [c["loss_sq"] for c in calls if c["loss_sq"] is not None]
        gnorm = lv["gnorm"] if layer_got[i] > 0 else None
        grad_sqs = [c["loss_sq"] for c in calls] + [x for c in calls for x in c["probe_sq"]]
        nonfinite = any(x is not None and not math.isfinite(x) for x in grad_sqs) or (
            gnorm is not None and not math.isfinite(gnorm))
        st, act = calls[0]["stats"], calls[0]["act"]
        rows.append(Row(
            i=i, name=s.name, type=s.type, module=s.module, calls=len(calls),
            shape=tuple(s.calls[0].out_shape), numel=last["numel"], gain=gain, gsc=gsc,
            call_gains=call_gains, out_mean=st.get("mean"), out_std=st.get("std"),
            out_nonfinite=int(sum(c["stats"].get("nonfinite") or 0 for c in calls)),
            act=ctx.structure[i]["act"], act_zero=act.get("zero_frac"), act_dead=act.get("dead_frac"),
            act_sat=act.get("saturated_frac"), gnorm=gnorm, wnorm=lv["wnorm"],
            out_grad=math.sqrt(sum(loss_sq)) if loss_sq else None, grad_nonfinite=nonfinite,
            same_shapes=len({c.out_shape for c in s.calls}) == 1))
    for k, row in enumerate(rows):
        nxt = next((r.gain for r in rows[k + 1:] if r.gain is not None), None)
        row.growth = row.gain / nxt if (row.gain is not None and nxt) else None
    return rows


# ------------------------------------------------------------------------------------------
# findings
# ------------------------------------------------------------------------------------------
def _nonfinite(rows: list[Row], verdicts: _Verdicts, ctx: Context) -> list:
    hit = [r for r in rows if r.grad_nonfinite]
    if not hit:
        return []
    worst = hit[-1]  # the first in backward order
    for r in hit:
        verdicts.mark(r.i, "nonfinite", {"nonfinite_gradient": True})
    ev = {"where": "backward", "worst_layer": worst.name, "layers_affected": len(hit),
          "grad_norm": ctx.global_gnorm}
    return [A.make_event("nonfinite", worst.name, "critical",
                         f"nonfinite: the forward pass is finite but gradients are NaN/Inf, first "
                         f"(in backward order) at {worst.name} ({len(hit)} layer(s) affected)", ev)]


def _over_depth(rows: list[Row], verdicts: _Verdicts, mf, ctx: Context) -> list:
    if len(rows) < 2:
        return []
    f = A.depth_finding([r.gain for r in rows], ctx.thresholds)
    for r, ratio in zip(rows, f.ratios):
        r.ratio = ratio
    if f.kind == "healthy":
        return []
    worst, ref = rows[f.worst], rows[f.ref]
    for k in f.flagged:
        verdicts.mark(k, f.kind, {"gain_ratio": rows[k].ratio, "growth": rows[k].growth})
    ev = {"worst_layer": worst.name, "reference_layer": ref.name, "gain_ratio": f.worst_ratio,
          "growth_per_layer": f.growth, "trend_total": f.trend_total, "depth": f.depth,
          "gsc": worst.gsc, "grad_norm": ctx.global_gnorm, "is_recurrent": False,
          "has_norm": ctx.model_info["has_norm"], "has_residual": ctx.model_info["has_residual"]}
    if mf is not None:
        ev.update({"chi_1_estimate": mf.chi_1_measured, "chi_1_theory": mf.chi_1_theory,
                   "activation": mf.activation, "sigma_w2": mf.sigma_w2, "sigma_b2": mf.sigma_b2,
                   "critical_sigma_w2": mf.critical_sigma_w2})
    else:
        acts = [r.act for r in rows if r.act]
        ev.update({"chi_1_estimate": f.growth ** 2 if f.growth else None, "chi_1_theory": None,
                   "activation": max(acts, key=acts.count) if acts else None,
                   "sigma_w2": None, "sigma_b2": None, "critical_sigma_w2": None})
    msg = A.depth_message(f.kind, f, worst.name, ref.name)
    return [A.make_event(f.kind, worst.name, f.severity, msg, ev)]


def _series_finding(label: str, gains: list, reverse: bool, ctx: Context):
    """A :class:`TimeSeries` and its depth finding (time runs towards the output)."""
    order = list(reversed(gains)) if reverse else gains
    f = A.depth_finding(order, ctx.thresholds)
    worst = None
    if f.worst is not None:
        worst = (len(gains) - 1 - f.worst) if reverse else f.worst
    ratio = f.worst_ratio if f.worst is not None else max((r for r in f.ratios if r is not None), default=None)
    return f, worst, ratio


def _over_time(rows: list[Row], series_vals: list, verdicts: _Verdicts, ctx: Context):
    """Findings over time steps: replayed nn.RNN/LSTM/GRU, and modules called repeatedly."""
    series, findings = [], []
    common = {"grad_norm": ctx.global_gnorm, "has_norm": ctx.model_info["has_norm"],
              "has_residual": ctx.model_info["has_residual"]}
    items = []
    for sv in series_vals:
        gains = [math.sqrt(x / ctx.w_sq) if x is not None and ctx.w_sq > 0 else None for x in sv["sq"]]
        mode = getattr(rows[sv["slot"]].module, "mode", "")
        items.append((sv["label"], "unrolled", gains, sv["reverse"], sv["rho"], sv["slot"], True,
                      {"RNN_TANH": "tanh", "RNN_RELU": "relu"}.get(mode), "time step", mode))
    for r in rows:
        # an RNN cell in a Python loop, or any module called again and again with same-shaped
        # outputs: its calls are the steps
        if r.calls < 3 or isinstance(r.module, nn.RNNBase) or not r.same_shapes:
            continue
        items.append((r.name, "calls", r.call_gains, False, spectral_radius(r.module), r.i,
                      isinstance(r.module, nn.RNNCellBase), None, "call", r.type))
    for label, kind, gains, reverse, rho, slot_i, recurrent, act, what, cell in items:
        f, worst, ratio = _series_finding(label, gains, reverse, ctx)
        series.append(TimeSeries(layer=label, kind=kind, gains=tuple(gains), growth_per_step=f.growth,
                                 ratio=ratio, worst_step=worst, spectral_radius=rho, verdict=f.kind))
        if f.kind == "healthy":
            continue
        ev = {"worst_layer": label, "time_step": worst, "depth": f.depth, "trend_total": f.trend_total,
              "growth_per_layer": f.growth, "chi_1_estimate": f.growth ** 2 if f.growth else None,
              "gain_ratio": f.worst_ratio, "spectral_radius": rho, "is_recurrent": recurrent,
              "activation": act, "cell": cell, **common}
        last = 0 if reverse else len(gains) - 1
        findings.append(A.make_event(f.kind, label, f.severity,
                                     A.depth_message(f.kind, f, f"{label} {what} {worst}",
                                                     f"{what} {last}", what=what), ev))
        verdicts.mark(slot_i, f.kind, {"time_step": worst, "gain_ratio": f.worst_ratio,
                                       "growth_per_step": f.growth})
    return series, findings


def _activations(rows: list[Row], verdicts: _Verdicts, ctx: Context) -> list:
    th, findings = ctx.thresholds, []
    for kind, key, limit in (("dead_units", "act_dead", th.dead), ("saturated", "act_sat", th.saturated)):
        hit = [r for r in rows if getattr(r, key) is not None and math.isfinite(getattr(r, key))
               and getattr(r, key) >= limit]
        if not hit:
            continue
        worst = max(hit, key=lambda r: getattr(r, key))
        frac = getattr(worst, key)
        st = ctx.structure[worst.i]
        ev = {"fraction": frac, "worst_layer": worst.name, "activation": worst.act,
              "layers_affected": len(hit), "threshold": limit, "depth": len(rows)}
        if kind == "dead_units":
            unit_dim = 1 if (st["conv"] and len(worst.shape) > 2) else -1
            per_unit = math.prod(worst.shape) // worst.shape[unit_dim] if worst.shape else 0
            ev.update({"zero_fraction": worst.act_zero, "samples_per_unit": per_unit})
            msg = (f"dead_units: {100 * frac:.0f}% of the units after {worst.name} ({worst.act}) are "
                   f"0 on the whole batch and pass no gradient ({len(hit)} layer(s) at or above "
                   f"{100 * limit:.0f}%)")
            if per_unit < 16:
                msg += (f"; measured on only {per_unit} samples per unit: a small batch, or inputs "
                        "that became nearly identical with depth, overstate it")
        else:
            ev.update({"sigma_w2": st["sigma_w2"], "sigma_b2": st["sigma_b2"]})
            msg = (f"saturated: {100 * frac:.0f}% of the {worst.act} outputs after {worst.name} sit "
                   f"in the flat tails (derivative < 2% of its maximum; {len(hit)} layer(s) at or "
                   f"above {100 * limit:.0f}%)")
        for r in hit:
            verdicts.mark(r.i, kind, {"fraction": getattr(r, key)})
        findings.append(A.make_event(kind, worst.name, "warning", msg, ev))
    return findings


# ------------------------------------------------------------------------------------------
# residual blocks, mean field, prescriptions
# ------------------------------------------------------------------------------------------
def residual_summary(rows: list[Row], residual_vals: list, ctx: Context) -> ResidualSummary | None:
    if not ctx.residual_struct:
        return None
    blocks = []
    for (idx, branch_slots), rv in zip(ctx.residual_struct, residual_vals):
        outs, diffs = rv["out"], rv["diff"]
        back = None
        if all(x is not None for x in outs + diffs) and sum(outs) > 0:
            back = math.sqrt(sum(diffs) / sum(outs))
        names = tuple(dict.fromkeys(rows[k].name for k in sorted(branch_slots)))
        blocks.append(ResidualBlock(index=idx, after=names[-1] if names else "", branch_layers=names,
                                    forward_ratio=(rv["bn"] / rv["sn"]) if rv["sn"] else math.inf,
                                    backward_ratio=back))
    eff = eff_layers = 0.0
    for b in blocks:
        r = b.backward_ratio if b.backward_ratio is not None else b.forward_ratio
        p = 1.0 if (r is None or not math.isfinite(r)) else r * r / (1.0 + r * r)
        eff += p
        eff_layers += p * max(1, len(b.branch_layers))
    return ResidualSummary(blocks=tuple(blocks), effective_depth=eff, effective_layers=eff_layers,
                           compositional_depth=len(blocks))


def _theory():
    try:
        from ..theory import meanfield
    except ImportError:  # pragma: no cover - the explain pillar ships with gradhealth
        return None, None
    try:
        from ..theory.criticality import critical_sigma_w2
    except ImportError:  # pragma: no cover
        critical_sigma_w2 = None
    return meanfield, critical_sigma_w2


def meanfield_check(rows: list[Row], structure: list) -> MeanFieldCheck | None:
    """Longest run of chained, square nn.Linear layers with one elementwise activation."""
    def key(i):
        st = structure[i]
        if st["act"] is not None and not st["direct"]:
            return None  # something sits between the layer and its activation: not plain
        return st["act"] or "linear"

    def plain(i):
        st = structure[i]
        return st["linear"] and rows[i].calls == 1 and st["square"] and key(i) is not None

    best, run = None, []
    for i in range(len(rows)):
        if (plain(i) and run and structure[i]["chained"] and key(i) == key(run[-1])
                and rows[run[-1]].gain and rows[i].gain):
            run.append(i)
            continue
        if len(run) >= 4 and (best is None or len(run) > len(best)):
            best = run
        run = [i] if plain(i) else []
    if len(run) >= 4 and (best is None or len(run) > len(best)):
        best = run
    if best is None:
        return None
    act = key(best[0])
    sw2 = sum(structure[i]["sigma_w2"] for i in best) / len(best)
    sb2 = sum(structure[i]["sigma_b2"] for i in best) / len(best)
    interior = best[1:-1] if len(best) > 4 else best
    ratios = sorted((rows[a].gain / rows[b].gain) ** 2 for a, b in zip(interior[:-1], interior[1:])
                    if math.isfinite(rows[a].gain) and math.isfinite(rows[b].gain))
    if not ratios:
        return None
    mid = len(ratios) // 2
    chi = ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])
    meanfield, crit_fn = _theory()
    chi_th = crit = None
    if meanfield is not None:
        try:
            from ..theory.activations import get_activation

            chi_th = float(meanfield.chi_1(get_activation(act, **structure[best[0]]["act_params"]), sw2, sb2))
        except Exception:  # an activation the theory does not know (relu6, softsign, ...)
            chi_th = None
    if crit_fn is not None:
        try:
            crit = float(crit_fn(act, sb2))
        except Exception:  # no critical point (e.g. sigmoid at this sigma_b2)
            crit = None
    if chi <= 0 or not math.isfinite(chi):
        phase = "ordered" if chi == 0 else "chaotic"
    else:
        phase = "critical" if abs(math.log(chi)) < math.log(1.05) else ("chaotic" if chi > 1 else "ordered")
    return MeanFieldCheck(layers=(rows[best[0]].name, rows[best[-1]].name), depth=len(best),
                          activation=act, sigma_w2=sw2, sigma_b2=sb2, chi_1_measured=chi,
                          chi_1_theory=chi_th, critical_sigma_w2=crit, phase=phase)


def prescriptions_for(findings: list, model_info: dict, notes: list) -> list:
    """Ask :func:`gradhealth.remedies.prescribe.prescribe` once per kind; merge and re-rank."""
    try:
        from ..remedies.prescribe import prescribe
    except ImportError:  # pragma: no cover - the cure pillar ships with gradhealth
        notes.append("prescriptions unavailable: gradhealth.remedies.prescribe could not be imported.")
        return []
    from ..events import Prescription

    out, codes, kinds = [], set(), set()
    for e in findings:
        if e.kind in kinds:
            continue
        kinds.add(e.kind)
        try:
            ps = prescribe(e.kind, e.evidence, activation=e.evidence.get("activation"), layer=e.layer,
                           model_info=model_info)
        except Exception as exc:  # a prescription bug must not hide the diagnosis
            notes.append(f"prescriptions for {e.kind} failed: {type(exc).__name__}: {exc}")
            continue
        for p in ps:
            if p.code not in codes:
                codes.add(p.code)
                out.append(Prescription(rank=len(out) + 1, action=p.action, code=p.code,
                                        reason=p.reason, kind=p.kind))
    return out


# ------------------------------------------------------------------------------------------
def _layer_note(row: Row, ctx: Context) -> str:
    bits = []
    if row.i in ctx.folded:
        bits.append("includes parameters of " + ", ".join(ctx.folded[row.i])
                    + " (used directly by this module)")
    if ctx.structure[row.i]["trainable"] == "frozen":
        bits.append("frozen: no parameter gradient")
    elif row.gnorm is None:
        bits.append("no gradient reaches its parameters")
    if row.gain is None:
        bits.append("its output does not reach the model output (no backward signal)")
    return "; ".join(bits)


def assemble(slots, vals: dict, layer_got: list, ctx: Context, *, spectrum, loss_info: dict,
             settings: dict) -> ProbeResult:
    """The :class:`ProbeResult` of one probe."""
    rows = make_rows(slots, vals, layer_got, ctx)
    ctx.model_info = {"depth": len(rows), "has_norm": any(st["norm"] for st in ctx.structure),
                      "has_residual": bool(ctx.residual_struct),
                      "is_recurrent": any(isinstance(r.module, (nn.RNNBase, nn.RNNCellBase)) for r in rows)}
    verdicts = _Verdicts(len(rows))
    mf = meanfield_check(rows, ctx.structure)
    findings = _nonfinite(rows, verdicts, ctx) + _over_depth(rows, verdicts, mf, ctx)
    series, time_findings = _over_time(rows, vals["series"], verdicts, ctx)
    findings += time_findings + _activations(rows, verdicts, ctx)
    findings.sort(key=lambda e: (VERDICT_ORDER.index(e.kind), _SEVERITY_ORDER.index(e.severity)))
    for m in ctx.unused:
        ctx.notes.append(f"{ctx.names[m]} ({type(m).__name__}) owns parameters but never ran in the "
                         "forward pass.")
    prescriptions = prescriptions_for(findings, ctx.model_info, ctx.notes)
    layers = tuple(LayerReport(
        index=r.i, name=r.name, type=r.type, calls=r.calls, out_shape=r.shape,
        n_params=ctx.structure[r.i]["n_params"], trainable=ctx.structure[r.i]["trainable"],
        out_mean=r.out_mean, out_std=r.out_std, out_nonfinite=r.out_nonfinite, activation=r.act,
        act_zero_frac=r.act_zero, act_dead_frac=r.act_dead, act_saturated_frac=r.act_sat,
        weight_norm=r.wnorm, grad_norm=r.gnorm,
        grad_to_weight=(r.gnorm / r.wnorm) if (r.gnorm is not None and r.wnorm) else None,
        out_grad_norm=r.out_grad, gain=r.gain, gain_ratio=r.ratio, growth=r.growth, gsc=r.gsc,
        verdict=verdicts.kind[r.i], evidence=verdicts.evidence[r.i], note=_layer_note(r, ctx))
        for r in rows)
    return ProbeResult(verdict=A.overall([e.kind for e in findings]),
                       worst_layer=findings[0].layer if findings else None, layers=layers,
                       findings=tuple(findings), prescriptions=tuple(prescriptions),
                       jacobian=spectrum, residual=residual_summary(rows, vals["residual"], ctx),
                       recurrent=tuple(series), meanfield=mf, loss=loss_info, settings=settings,
                       notes=tuple(ctx.notes))
