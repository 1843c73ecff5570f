"""Gallery section: the four canonical broken networks, cured in one line each.

For every case of :data:`gradhealth.gallery._cases.CASES` the figure shows the backward
signal per layer (or per time step) before and after the prescribed remedy, measured with
plain autograd hooks, and a short training run of both versions. Everything is computed when
the figure is drawn (a few seconds on one core).
"""

from __future__ import annotations

import functools
import math

from ._figure import Figure

TITLE = "Cure: one line per diagnosis, and the proof that it works"
INTRO = ("Each pair below is the same network, broken and cured by the rank-1 prescription the "
         "probe gives for it (`gradhealth.remedies.*`, applied in place). Left: the size of the "
         "backward signal `||dL/dh||` at each layer (or time step), relative to the last one; a "
         "flat line is healthy. Right: the loss of a short training run on scikit-learn's digits "
         "(or a 100-step sequence task for the RNN), same data, same optimiser, same seed. Reproduce "
         "any of them with `gradhealth cure FILE.py:FACTORY`.")


@functools.lru_cache(maxsize=None)
def measure(slug: str) -> dict:
    """Profiles and loss curves of one case, broken and cured (cached for draw and table)."""
    import torch

    from ._cases import CASES, backward_profile, delay_task, digits, train

    case = next(c for c in CASES if c.slug == slug)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = delay_task(64)[0] if case.recurrent else digits()[0][:256]
        out = {"case": case}
        for label in ("broken", "cured"):
            model = case.build(0)
            if label == "cured":
                torch.manual_seed(0)
                case.apply(model)
            prof = backward_profile(model, x, case.recurrent)
            out[label] = {"profile": [p / prof[-1] for p in prof],
                          "spread": max(prof) / min(prof),
                          "curve": train(model, case.task, case.optimizer, case.lr, case.steps, every=10)}
    finally:
        torch.set_num_threads(threads)
    return out


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf (diverged)" if x > 0 else str(x)
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"


def draw_case(slug: str):
    """Backward profile and loss curve of case ``slug``, broken and cured, as one figure."""
    import matplotlib.pyplot as plt

    m = measure(slug)
    case = m["case"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, color in (("broken", "#d62728"), ("cured", "#2ca02c")):
        prof = m[label]["profile"]
        a.semilogy(range(len(prof)), prof, color=color, lw=1.8,
                   label=f"{label}: spread x{_fmt(m[label]['spread'])}")
        curve = m[label]["curve"]
        steps = [0] + [min(10 * i, case.steps) for i in range(1, len(curve))]
        finite = [v if math.isfinite(v) else float("nan") for v in curve]
        b.semilogy(steps, finite, color=color, lw=1.8, marker="o", ms=3,
               label=f"{label}: final {_fmt(curve[-1])}")
        if not math.isfinite(curve[-1]):
            first_bad = next(i for i, v in enumerate(curve) if not math.isfinite(v))
            b.axvline(steps[first_bad], color=color, ls=":", lw=1)
            b.text(steps[first_bad], 0.95, " diverged", color=color, va="top", fontsize=8,
                   transform=b.get_xaxis_transform())
    a.axhline(1.0, color="0.6", lw=0.8)
    a.set(xlabel="time step" if case.recurrent else "layer (input -> output)",
          ylabel="||dL/dh|| / value at the end", title=case.title)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.set(xlabel="training step", ylabel="loss (full data, log scale)",
          title=f"training: {'delay task' if case.task == 'delay' else 'digits'}, "
                f"{'Adam' if case.optimizer == 'adam' else 'SGD'} lr {case.lr:g}")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.28)  # tight_layout would measure every log tick label: slow
    return fig


def table_case(slug: str) -> str:
    """Markdown table of case ``slug``: remedy, backward spread and final loss, broken vs cured."""
    m = measure(slug)
    case = m["case"]
    br, cu = m["broken"], m["cured"]
    return "\n".join([
        f"Remedy: `{case.remedy}`", "",
        "| | broken | cured |", "|---|---|---|",
        f"| backward signal spread (max/min over {'steps' if case.recurrent else 'layers'}) "
        f"| {_fmt(br['spread'])} | {_fmt(cu['spread'])} |",
        f"| loss before training | {_fmt(br['curve'][0])} | {_fmt(cu['curve'][0])} |",
        f"| loss after {case.steps} steps | {_fmt(br['curve'][-1])} | {_fmt(cu['curve'][-1])} |",
    ])


_CAPTIONS = {
    "tanh_chaotic": ("With sigma_w2 = 4 a tanh layer multiplies the backward signal by about 1.17 "
                     "(chi_1 = 1.36, the chaotic phase), so over 40 layers the first layer's gradient "
                     "is hundreds of times the last one's and SGD makes little progress. "
                     "`critical_` puts sigma_w2 at the edge of chaos (1 for tanh)."),
    "sigmoid_default": ("sigmoid'(x) is at most 1/4: with PyTorch's default init each layer shrinks "
                        "the gradient about 7x, and nothing reaches the first layers (the loss stays "
                        "at chance, ln 10 = 2.30). Swapping to ReLU with He init passes the signal "
                        "through unchanged."),
    "linear_1p5": ("A linear chain with W = 1.5 I multiplies the gradient by exactly 1.5 per layer "
                   "(1.5^19 = 2217 over the chain); SGD diverges at once. An orthogonal W has every "
                   "singular value 1: the signal is preserved exactly."),
    "rnn_radius3": ("Time is depth: with recurrent spectral radius 3 the gradient grows about 1.3x "
                    "per step, 1e11 over 100 steps. `critical_(model, distribution='orthogonal')` "
                    "sets the recurrent matrix orthogonal at the tanh critical gain, and the signal "
                    "stays within a small factor over all 100 steps."),
}


@functools.lru_cache(maxsize=None)
def training_time_runs() -> dict:
    """A small ReLU MLP on digits (SGD 0.05, momentum 0.9, 150 steps of 64), run with a NaN
    injected into one gradient at step 60 (with and without ``skip_nonfinite``) and with the
    whole gradient multiplied by 300 at steps 40, 80, 120 (unclipped, ``clip_grad_norm_`` at
    1.0, ``AutoClip`` at the 10th percentile). Full-data loss every 5 steps."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..remedies import AutoClip, clip_grad_norm_, he_, skip_nonfinite
    from ._cases import digits

    x, y = digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(mode: str, spikes=(), nan_at=None, steps: int = 150):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        he_(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        guard = skip_nonfinite(opt) if mode == "guard" else None
        autoclip = AutoClip(percentile=10.0) if mode == "autoclip" else None
        g = torch.Generator().manual_seed(0)
        curve = []
        for s in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if s in spikes:
                for p in model.parameters():
                    p.grad.mul_(300.0)
            if s == nan_at:
                model[0].weight.grad[0, 0] = float("nan")
            if mode == "clip":
                clip_grad_norm_(model.parameters(), max_norm=1.0)
            elif mode == "autoclip":
                autoclip(model.parameters())
            opt.step()
            if s % 5 == 4:
                with torch.no_grad():
                    curve.append((s + 1, float(F.cross_entropy(model(x), y))))
        return {"curve": curve, "skipped": guard.skipped_steps if guard else 0}

    try:
        return {"nan_none": run("none", nan_at=60), "nan_guard": run("guard", nan_at=60),
                "spike_none": run("none", spikes=(40, 80, 120)),
                "spike_clip": run("clip", spikes=(40, 80, 120)),
                "spike_autoclip": run("autoclip", spikes=(40, 80, 120))}
    finally:
        torch.set_num_threads(threads)


def draw_training_time():
    """Loss and gradient norm of the training-time remedies (clipping, AutoClip, skip) on one run."""
    import matplotlib.pyplot as plt

    r = training_time_runs()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, color, label, lw in (("nan_none", "#d62728", "no guard", 4.0),
                                  ("nan_guard", "#2ca02c", "skip_nonfinite(optimizer)", 1.6)):
        steps, loss = zip(*r[key]["curve"])
        a.semilogy(steps, [v if math.isfinite(v) else float("nan") for v in loss], color=color, lw=lw,
                   label=f"{label}: final {_fmt(loss[-1])}")
        bad = [st for st, v in zip(steps, loss) if not math.isfinite(v)]
        if bad:  # a NaN loss has no place on the axis: mark it along the top
            a.plot(bad, [0.9] * len(bad), "x", color=color, ms=5, transform=a.get_xaxis_transform())
            a.text(bad[0], 0.84, "loss NaN from here on", color=color, fontsize=8, va="top",
                   transform=a.get_xaxis_transform())
    a.axvline(60, color="0.5", ls=":", lw=1)
    a.text(60, 0.99, " NaN gradient", transform=a.get_xaxis_transform(), va="top", fontsize=8)
    a.set(xlabel="training step", ylabel="loss (full data, log scale)",
          title="one NaN gradient at step 60")
    for key, color, label in (("spike_none", "#d62728", "no clipping"),
                              ("spike_clip", "#1f77b4", "clip_grad_norm_(max_norm=1.0)"),
                              ("spike_autoclip", "#2ca02c", "AutoClip(percentile=10.0)")):
        steps, loss = zip(*r[key]["curve"])
        b.semilogy(steps, [v if math.isfinite(v) else float("nan") for v in loss], color=color, lw=1.8,
                   label=f"{label}: final {_fmt(loss[-1])}")
    for s in (40, 80, 120):
        b.axvline(s, color="0.5", ls=":", lw=1)
    b.set(xlabel="training step", ylabel="loss (full data, log scale)",
          title="gradient x300 at steps 40, 80, 120")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.28)
    return fig


def table_training_time() -> str:
    """Markdown table of the final loss of each training-time remedy run."""
    r = training_time_runs()
    last = {k: v["curve"][-1][1] for k, v in r.items()}
    return "\n".join([
        "| run | loss after 150 steps |", "|---|---|",
        f"| NaN at step 60, no guard | {_fmt(last['nan_none'])} |",
        f"| NaN at step 60, `skip_nonfinite(optimizer)` ({r['nan_guard']['skipped']} step skipped) "
        f"| {_fmt(last['nan_guard'])} |",
        f"| gradient x300 at 40/80/120, no clipping | {_fmt(last['spike_none'])} |",
        f"| ... `clip_grad_norm_(model.parameters(), max_norm=1.0)` | {_fmt(last['spike_clip'])} |",
        f"| ... `AutoClip(percentile=10.0)` | {_fmt(last['spike_autoclip'])} |",
    ])


def figures() -> list[Figure]:
    """The cure section's figures: one per canonical case, then the training-time remedies."""
    from ._cases import CASES

    cases = [Figure(slug=f"cure_{c.slug}", title=c.title, caption=_CAPTIONS[c.slug],
                    draw=functools.partial(draw_case, c.slug), table=functools.partial(table_case, c.slug))
             for c in CASES]
    return cases + [Figure(
        slug="cure_training_time", title="Training-time remedies: skip a NaN step, clip a spike",
        caption=("Left: one NaN in one gradient entry at step 60 spreads through the optimizer into "
                 "every weight, and the run is lost; `skip_nonfinite` skips that step (parameters and "
                 "optimizer state untouched) and training goes on. Right: three gradient spikes (x300) "
                 "throw an unclipped run off for good; clipping the global norm at 1.0, or at the 10th "
                 "percentile of the run's own norm history (AutoClip), absorbs them."),
        draw=draw_training_time, table=table_training_time)]
