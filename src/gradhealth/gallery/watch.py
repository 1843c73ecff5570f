"""Gallery section: a broken and a fixed network trained under :func:`gradhealth.watch`.

Both train for a few dozen steps on ``sklearn.datasets.load_digits`` (8x8 digit images, 10
classes; ships inside scikit-learn, no download). The broken one is a 10-hidden-layer sigmoid
MLP with PyTorch's default initialisation: the backward signal shrinks by about 4x per layer
(sigmoid' <= 1/4), so the first layers barely learn. The fixed one is the same depth with
ReLU and He initialisation. Everything drawn is read back from the run store, as
``gradhealth summary`` would read it.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile

from ._figure import Figure

TITLE = "Watch: what happens while it trains"
INTRO = ("Two 10-hidden-layer MLPs trained for 40 steps on the scikit-learn digits under "
         "`gradhealth.watch`, read back from their run stores: a deep sigmoid net with default "
         "initialisation (broken) and the same depth with ReLU and He initialisation (fixed).")

DEPTH, WIDTH, STEPS, BATCH, LR = 10, 64, 40, 128, 0.02


def _data():
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.asarray(y), dtype=torch.long)


def _model(broken: bool):
    import torch
    from torch import nn

    act = nn.Sigmoid if broken else nn.ReLU
    layers, width_in = [], 64
    for _ in range(DEPTH):
        layers += [nn.Linear(width_in, WIDTH), act()]
        width_in = WIDTH
    layers.append(nn.Linear(width_in, 10))
    model = nn.Sequential(*layers)
    if not broken:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # the output layer feeds a softmax, not a ReLU
            model[-1].weight.mul_(1 / math.sqrt(2))
    return model


@functools.lru_cache(maxsize=None)
def _train(broken: bool):
    """Train under watch; return the stored run (read back from disk) and the accuracy."""
    import torch
    from torch import nn

    from ..store import load_run
    from ..watch import watch

    g = torch.Generator().manual_seed(0)
    state = torch.random.get_rng_state()
    torch.manual_seed(1)
    try:
        model = _model(broken)
        x, y = _data()
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        tmp = tempfile.mkdtemp(prefix="gradhealth-gallery-")
        try:
            watcher = watch(model, opt, run_dir=tmp)
            try:
                for _ in range(STEPS):
                    idx = torch.randint(0, len(x), (BATCH,), generator=g)
                    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    watcher.observe(loss)
            finally:
                watcher.remove()
            run = load_run(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
    finally:
        torch.random.set_rng_state(state)
    return run, acc


def _grid(run):
    """(layer labels, layer names, steps, log10 grad-norm matrix layers x steps) of a stored
    run, keeping only the layers with a gradient (weight layers, not activations)."""
    import numpy as np

    has = {r["layer"] for r in run.layer_stats if r["grad_norm"] is not None}
    layers = [d for d in run.layers if d["index"] in has]
    steps = sorted({r["step"] for r in run.layer_stats})
    col = {s: j for j, s in enumerate(steps)}
    pos = {d["index"]: i for i, d in enumerate(layers)}
    m = np.full((len(layers), len(steps)), np.nan)
    for r in run.layer_stats:
        v = r["grad_norm"]
        if v is not None and r["layer"] in pos:
            m[pos[r["layer"]], col[r["step"]]] = math.log10(v) if v > 0 else np.nan
    labels = [f"{d['name']} ({d['type']})" if d["type"] else d["name"] for d in layers]
    return labels, [d["name"] for d in layers], steps, m


def _ratio_first_last(run) -> float:
    """Median over steps of grad_norm(first layer) / grad_norm(last layer)."""
    import numpy as np

    m = _grid(run)[3]
    r = m[0] - m[-1]
    r = r[np.isfinite(r)]
    return float(10 ** np.median(r)) if r.size else math.nan


def _draw_heatmaps():
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize

    from ..report.run_view import is_pathology

    runs = {"broken: sigmoid, default init": _train(True)[0],
            "fixed: ReLU, He init": _train(False)[0]}
    grids = {k: _grid(r) for k, r in runs.items()}
    finite = np.concatenate([g[3][np.isfinite(g[3])] for g in grids.values()])
    norm = Normalize(vmin=float(finite.min()), vmax=float(finite.max()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, constrained_layout=True)
    for ax, (label, run) in zip(axes, runs.items()):
        labels, names, steps, m = grids[label]
        im = ax.imshow(m, aspect="auto", origin="upper", cmap="viridis", norm=norm,
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, len(names) - 0.5, -0.5),
                       interpolation="nearest")
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        row = {n: i for i, n in enumerate(names)}
        for e in run.events:
            if e.step is None or not is_pathology(e):
                continue
            y = row.get(e.layer)
            if y is None:
                ax.axvline(e.step, color="red", lw=0.8, alpha=0.6)
            else:
                ax.plot(e.step, y, marker="x", color="red", ms=6, mew=1.5)
    axes[0].set_ylabel("layer (input at top)")
    fig.colorbar(im, ax=axes, label="log10 gradient norm", shrink=0.9)
    return fig


def _draw_losses():
    import matplotlib.pyplot as plt

    from ..report.run_view import is_pathology

    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    for broken, color in ((True, "tab:red"), (False, "tab:blue")):
        run, acc = _train(broken)
        s, v = run.step_series("loss")
        ax.plot(s, v, color=color,
                label=f"{'broken' if broken else 'fixed'} (accuracy {acc:.0%})")
        for e in run.events:
            if is_pathology(e) and e.step is not None and e.step in set(s.tolist()):
                ax.plot(e.step, v[list(s).index(e.step)], "x", color=color, ms=6)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    ax.set_title("loss; x = step with a gradhealth event", fontsize=10)
    return fig


def _events_md(run, limit: int = 6) -> str:
    from ..report.run_view import is_pathology

    bad = [e for e in run.events if is_pathology(e)]
    if not bad:
        return "_no event: gradhealth raised no alarm._"
    rows = ["| step | kind | layer | message |", "|---|---|---|---|"]
    for e in bad[:limit]:
        msg = e.message.replace("|", "\\|")
        rows.append(f"| {e.step} | {e.kind} | `{e.layer or '(model)'}` | {msg} |")
    if len(bad) > limit:
        rows.append(f"| ... | | | {len(bad) - limit} more |")
    return "\n".join(rows)


def figures() -> list[Figure]:
    """The watch section's figures: a watched run that breaks, beside the same run fixed."""
    from ..report.run_view import is_pathology

    (broken, acc_b), (fixed, acc_f) = _train(True), _train(False)
    nb = sum(is_pathology(e) for e in broken.events)
    nf = sum(is_pathology(e) for e in fixed.events)
    first = min((e for e in broken.events if is_pathology(e)),
                key=lambda e: (e.since if e.since is not None else (e.step or 0)), default=None)
    first_txt = (f"the first was `{first.kind}` in `{first.layer or 'the model'}` at step "
                 f"{first.since if first.since is not None else first.step}"
                 if first is not None else "none fired")
    rb, rf = _ratio_first_last(broken), _ratio_first_last(fixed)
    return [
        Figure(
            slug="watch_grad_heatmap",
            title="Per-layer gradient norm over training: broken vs fixed",
            caption=(f"Each cell is one layer's gradient norm at one step (log colour, one scale "
                     f"for both). In the sigmoid net the first layer's gradient is {rb:.1e} times "
                     f"the last layer's (median over {STEPS} steps): the signal dies on the way "
                     f"back. With ReLU and He initialisation the ratio is {rf:.2g}. Red marks are "
                     f"events: {nb} in the broken run ({first_txt}), {nf} in the fixed one."),
            draw=_draw_heatmaps,
            table=lambda: "**Broken run events**\n\n" + _events_md(broken)
                          + "\n\n**Fixed run events**\n\n" + _events_md(fixed),
        ),
        Figure(
            slug="watch_loss",
            title="Loss of the broken and the fixed network",
            caption=(f"Same data, depth, optimiser and steps. After {STEPS} steps the fixed net "
                     f"reaches {acc_f:.0%} training accuracy, the broken one {acc_b:.0%} (chance "
                     "is 10%): its early layers were not learning."),
            draw=_draw_losses,
        ),
    ]
