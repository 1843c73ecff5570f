"""Gallery section: scalar chains and linear chains (:mod:`gradhealth.theory.chain`)."""

from __future__ import annotations

import math

import numpy as np

from ._figure import Figure

TITLE = "Chains: where vanishing and exploding gradients come from"
INTRO = ("One unit per layer, the same weight everywhere: the smallest networks that show the "
         "problem. A gradient through L layers is a product of L factors `w * phi'(z)`, so it "
         "shrinks or grows geometrically unless those factors stay close to 1. Every number "
         "below is computed by `gradhealth.theory.chain`; rerun `gradhealth chain` or "
         "`gradhealth power` to get them in a terminal.")

_COLORS = ["#f4a3c0", "#d62728", "#7f0000", "#3d0000", "#1a0000", "#000000", "#555555", "#999999"]


def _colors(n: int):
    import matplotlib

    if n <= 3:
        return _COLORS[:n]
    cmap = matplotlib.colormaps["Reds"]
    return [cmap(0.3 + 0.7 * i / max(1, n - 1)) for i in range(n)]


def plot_chain(result, ax=None, slopes: bool = False):
    """Draw ``y_1(x) .. y_L(x)`` of a :class:`~gradhealth.theory.chain.ChainResult` on one axes.

    With ``slopes=True`` a second panel shows ``|dy_l/dx|`` on a log scale. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        if slopes:
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        else:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            ax2 = None
    else:
        fig, ax2 = ax.figure, None
    cols = _colors(result.depth)
    for l in range(result.depth):
        ax.plot(result.x, result.outputs[l], color=cols[l], lw=1.8, label=f"depth {l + 1}")
        if ax2 is not None:
            s = np.abs(result.slopes[l])
            with np.errstate(divide="ignore"):  # zero slopes (dead relu side) are left out
                ax2.semilogy(result.x, np.where(s > 0, s, np.nan), color=cols[l], lw=1.5,
                             label=f"depth {l + 1}: max {result.max_slope[l]:.3g}")
    w = result.weights
    wdesc = f"w = {w[0]:g}" if np.all(w == w[0]) else "per-layer w"
    b = result.biases
    bdesc = f"b = {b[0]:g}" if np.all(b == b[0]) else "b = " + ", ".join(f"{v:g}" for v in b)
    ax.set(xlabel="x", ylabel="y", title=f"{result.activation} chain, {wdesc}, {bdesc}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if ax2 is not None:
        ax2.set(xlabel="x", ylabel="|dy/dx| (log)", title="slope")
        ax2.set_ylim(bottom=max(1e-6, ax2.get_ylim()[0]))
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _w8(name: str):
    from ..theory.chain import scalar_chain

    return plot_chain(scalar_chain(name, 8.0, 3, points=801), slopes=True)


def _sigmoid_steep():
    import matplotlib.pyplot as plt

    from ..theory.chain import scalar_chain

    w, L = 8.0, 8
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    deep = scalar_chain("sigmoid", w, bias=[0.0] + [-w / 2] * (L - 1), x_range=(-1, 1), points=2001)
    plot_chain(scalar_chain("sigmoid", w, bias=[0.0, -w / 2, -w / 2]), ax=ax)
    ax.set_title("sigmoid chain, w = 8, b = 0, -4, -4")
    flat = scalar_chain("sigmoid", w, L, 0.0, points=2001)
    ls = np.arange(1, L + 1)
    ax2.semilogy(ls, deep.max_slope, "o-", color="#7f0000", label="b = -w/2 (after layer 1)")
    ax2.semilogy(ls, (w / 4) ** ls, "k--", lw=1, label="(w/4)^L = 2^L")
    ax2.semilogy(ls, flat.max_slope, "s-", color="#999999", label="b = 0")
    ax2.set(xlabel="depth L", ylabel="max |dy/dx|", title="steepest slope per depth")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bumps():
    import matplotlib.pyplot as plt

    from ..theory.chain import bumps

    x = np.linspace(-0.4, 0.4, 4001)
    y, d = bumps(x)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot(x, y, color="#7f0000")
    ax.set(xlabel="x", ylabel="y", title="tanh(5 tanh(40x-5) - 5 tanh(40x) + 5 tanh(40x+5))")
    ax2.plot(x, d, color="#d62728")
    ax2.set(xlabel="x", ylabel="dy/dx", title=f"slope: three cliffs, max |dy/dx| = {np.abs(d).max():.0f}")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _factors():
    import matplotlib.pyplot as plt

    from ..theory.chain import scalar_chain

    f = scalar_chain("sigmoid", [2.0, 10.0, 1.0, 1.0], bias=[0.0, -3.0, 0.0, 0.0], x=[1.0]).factors(1.0)
    terms = f.terms(1)
    vals = np.array([abs(t.value) for t in terms])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    small = int(np.argmin(vals))
    cols = ["#d62728" if i == small else "#888888" for i in range(len(terms))]
    ax.bar(range(len(terms)), np.log10(vals), color=cols)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(terms)), [f"{t.name}\n{t.meaning}" for t in terms], fontsize=8)
    for i, v in enumerate(vals):
        ax.text(i, np.log10(v), f"{terms[i].value:.3g}", ha="center",
                va="bottom" if v >= 1 else "top", fontsize=8)
    ax.set(ylabel="log10 |factor|",
           title=f"dy/dw1 = product of these = {f.grad_w[0]:.3g} (sigmoid chain, x = 1)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


_POWER_WS = (0.6, 1.6, 2.34)


def _powers():
    import matplotlib.pyplot as plt

    from ..theory.chain import FLOAT_LIMITS, power_table

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for w, c in zip(_POWER_WS, ("#1f77b4", "#ff7f0e", "#d62728")):
        t = power_table(w, 40)
        ax.plot(np.arange(1, 41), t.log10_abs, "o-", ms=3, color=c, label=f"w = {w:g}")
    f16 = FLOAT_LIMITS["float16"]
    for v, lab in ((f16.max, "float16 max 65504"), (f16.tiny, "float16 smallest normal 6.1e-5"),
                   (f16.smallest_subnormal, "float16 smallest subnormal 6.0e-8")):
        ax.axhline(math.log10(v), color="k", ls=":", lw=1)
        ax.text(40, math.log10(v), lab, ha="right", va="bottom", fontsize=8)
    ax.set(xlabel="depth l", ylabel="log10 |w**l|", title="w**l: the gain of a linear chain")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _powers_table() -> str:
    from ..theory.chain import FLOAT_LIMITS, power_limits, textbook_numbers

    ls = (1, 3, 5, 10, 15, 20, 30)
    lines = ["| l | " + " | ".join(f"{w:g}**l" for w in _POWER_WS) + " |",
             "|---:|" + "---:|" * len(_POWER_WS)]
    for l in ls:
        lines.append(f"| {l} | " + " | ".join(f"{w ** l:.4g}" for w in _POWER_WS) + " |")
    lines += ["", "| w | " + " | ".join(f"{d}: 0 / inf at depth" for d in FLOAT_LIMITS) + " |",
              "|---:|" + "---:|" * len(FLOAT_LIMITS)]
    for w in _POWER_WS:
        cells = []
        for d in FLOAT_LIMITS:
            p = power_limits(w, d)
            cells.append(f"{p.zero_depth or '-'} / {p.overflow_depth or '-'}")
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    lines += ["", "| quoted example | exact value | as quoted |", "|---|---:|---:|"]
    for row in textbook_numbers():
        lines.append(f"| `{row['expr']}` | {row['value']:.6g} | {row['quoted']} |")
    return "\n".join(lines)


def _deep_identity():
    import matplotlib.pyplot as plt

    from ..theory.chain import deep_linear

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    L = 30
    for a, c in ((1.5, "#d62728"), (0.5, "#1f77b4")):
        r = deep_linear(L, 32, init="identity", scale=a)
        ls = np.arange(L + 1)
        ax.semilogy(ls, r.act_norm[0], "o", ms=4, color=c, label=f"W = {a:g} I, measured")
        ax.semilogy(ls, r.predicted_act_norm, "-", color=c, lw=1, label=f"{a:g}^l")
        ax2.semilogy(ls, r.grad_norm[0], "o", ms=4, color=c, label=f"W = {a:g} I, measured")
        ax2.semilogy(ls, r.predicted_grad_norm, "-", color=c, lw=1, label=f"{a:g}^(L-l)")
    ax.set(xlabel="layer l", ylabel="||h_l||", title="activations (forward), width 32")
    ax2.set(xlabel="layer l", ylabel="||dJ/dh_l||", title="backprop signal")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _deep_gaussian():
    import matplotlib.pyplot as plt

    from ..theory.chain import deep_linear

    L, n = 50, 16
    r = deep_linear(L, n, init="gaussian", sigma_w=1.0, trials=200, seed=0)
    ls = np.arange(L + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for t in range(40):
        ax.plot(ls, np.log10(r.act_norm[t]), color="#888888", lw=0.5, alpha=0.6)
    ln10 = math.log(10)
    z = 1.2816  # 10% / 90% normal quantiles
    ax.plot(ls, np.log10(r.predicted_act_norm), "k-", lw=2, label="predicted rms: sigma_w^l = 1")
    ax.plot(ls, r.act_log_mean / ln10, "r-", lw=2, label="predicted median (log-normal)")
    ax.fill_between(ls, (r.act_log_mean - z * r.act_log_std) / ln10,
                    (r.act_log_mean + z * r.act_log_std) / ln10, color="r", alpha=0.15,
                    label="predicted 10-90% band")
    ax.plot(ls, np.log10(np.sqrt((r.act_norm ** 2).mean(0))), "k--", lw=1,
            label="measured rms over 200 nets")
    ax.set(xlabel="layer l", ylabel="log10 ||h_l||",
           title=f"Gaussian W, variance 1/n, width {n}: 40 of 200 nets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _claim():
    import matplotlib.pyplot as plt

    from ..theory.chain import weight_claim

    c = weight_claim(0.7, 50, 8)
    ls = np.arange(1, c.depth + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogy(ls, c.matrix_gain, "-", color="#d62728", label="8x8 matrix, all entries 0.7")
    ax.semilogy(ls, c.gaussian_gain, "-", color="#ff7f0e", label="8x8 matrix, entries N(0, 0.7^2)")
    ax.semilogy(ls, c.tanh_max_slope, "o", ms=3, color="#1f77b4", label="scalar tanh chain: max |dy/dx|")
    ax.semilogy(ls, c.tanh_bound, "-", color="#1f77b4", lw=0.8, label="bound 0.7^L")
    ax.semilogy(ls, c.sigmoid_max_slope, "s", ms=3, color="#2ca02c",
                label="scalar sigmoid chain (b = -w/2): max |dy/dx|")
    ax.semilogy(ls, c.sigmoid_bound, "-", color="#2ca02c", lw=0.8, label="bound (0.7/4)^L")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xlabel="depth / sequence length L", ylabel="gain (log)", title="w = 0.7: scalar vs matrix")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _captions() -> dict:
    """Captions with the numbers computed now (cheap: no figures drawn)."""
    from ..theory.chain import bumps, deep_linear, power_limits, scalar_chain, weight_claim

    ms = {a: scalar_chain(a, 8.0, 3).max_slope for a in ("relu", "tanh", "sigmoid")}
    steep = scalar_chain("sigmoid", 8.0, bias=[0.0] + [-4.0] * 7).max_slope
    _, d = bumps(np.linspace(-0.4, 0.4, 4001))
    f = scalar_chain("sigmoid", [2.0, 10.0, 1.0, 1.0], bias=[0.0, -3.0, 0.0, 0.0], x=[1.0]).factors(1.0)
    s = f.smallest(1)
    g = deep_linear(50, 16, init="gaussian", trials=200, seed=0)
    c = weight_claim(0.7, 50, 8)
    p16 = power_limits(0.6, "float16")
    return {
        "relu": (f"With w = 8 and b = 0 the relu chain is 8^L x for x > 0, so the steepest slope "
                 f"is {ms['relu'][0]:.0f}, {ms['relu'][1]:.0f}, {ms['relu'][2]:.0f} at depths 1, 2, 3. "
                 "Nothing bounds it: relu passes gradients through unchanged, so the weights alone "
                 "set the growth."),
        "tanh": (f"tanh keeps y in (-1, 1), yet the slope at x = 0 is {ms['tanh'][0]:.0f}, "
                 f"{ms['tanh'][1]:.0f}, {ms['tanh'][2]:.0f}: every layer sees z = 0, where tanh' = 1, "
                 "and multiplies by w. Bounded outputs do not bound gradients; the cliff just gets "
                 "narrower."),
        "sigmoid": (f"With b = 0 the sigmoid chain flattens instead: max slope {ms['sigmoid'][0]:.3g}, "
                    f"{ms['sigmoid'][1]:.3g}, {ms['sigmoid'][2]:.3g}. Each layer's input lies in (0, 1), "
                    "so z = 8*y sits in (0, 8) and the output is pushed towards 1, where sigmoid' is small."),
        "steep": (f"Biases of -w/2 after the first layer put every z at 0 when x = 0 (sigmoid(0) = 1/2, "
                  f"and 8 * 1/2 - 4 = 0), where sigmoid' peaks at 1/4. The slope there is (w/4)^L = 2^L: "
                  f"{steep[2]:.0f} at depth 3, {steep[7]:.0f} at depth 8; it grows more slowly than tanh's "
                  "8^L, but it grows."),
        "bumps": (f"A network with one hidden layer of three tanh units, bounded in (-1, 1), still has "
                  f"three cliffs with slopes up to {np.abs(d).max():.0f} (the hidden sum swings between "
                  "-5 and 5 with slope 5 * 40). Where the loss surface of a real network has such "
                  "cliffs, one gradient step can land far away."),
        "factors": (f"dy/dw1 of a depth-4 sigmoid chain at x = 1 is {f.grad_w[0]:.3g}, the product of "
                    f"the factors shown. The culprit is {s.name} = {s.meaning} = {s.value:.3g}: layer 2 "
                    f"is saturated (z2 = {f.z[1]:.3g}; compare sigmoid'(5) = 0.0066), and "
                    "`ChainResult.factors(x).smallest(k)` names it for you."),
        "powers": (f"A linear chain's gain is w^L: 0.6^15 = {0.6 ** 15:.3g} and 1.6^15 = {1.6 ** 15:.4g}. "
                   f"In float16, 0.6^L is subnormal from depth {p16.subnormal_depth} and rounds to zero "
                   f"from depth {p16.zero_depth}, while 1.6^L overflows at depth "
                   f"{power_limits(1.6, 'float16').overflow_depth} and 2.34^L at "
                   f"{power_limits(2.34, 'float16').overflow_depth}. Multiplied one layer at a time, though, "
                   "0.6^L never reaches zero: at the smallest subnormal the product rounds back to itself."),
        "identity": ("W = 1.5 I multiplies activations by 1.5 per layer and the backprop signal by 1.5 "
                     f"per layer going down: 1.5^30 = {1.5 ** 30:.3g}, while 0.5^30 = {0.5 ** 30:.3g}. "
                     f"The weight gradients dJ/dW_l = (dJ/dh_l) h_(l-1)^T have the same norm "
                     f"a^(L-1) in every layer ({1.5 ** 29:.3g} for a = 1.5): they all explode together."),
        "gaussian": (f"With W_ij ~ N(0, 1/n) the mean of ||h_l||^2 stays exactly 1 at any width, but a "
                     f"single network drifts. ln||h_l|| is a sum of l independent terms, so its spread "
                     f"grows like sqrt(l/(2n)) (std of ln||h_50||: predicted {g.act_log_std[-1]:.2f}, "
                     f"measured {np.log(g.act_norm[:, -1]).std():.2f}). The median sits far below the "
                     f"mean (predicted {math.exp(g.act_log_mean[-1]):.2f}, measured "
                     f"{np.median(g.act_norm[:, -1]):.2f})."),
        "claim": (f"'Even a weight of 0.7 explodes after enough inputs' is false for a scalar chain: "
                  f"|dy/dx| <= 0.7^L for tanh (measured {c.tanh_max_slope[-1]:.2g} at L = 50) and "
                  f"<= (0.7/4)^L for sigmoid ({c.sigmoid_max_slope[-1]:.2g}), whatever the biases and inputs. "
                  f"It is true for matrices: an 8x8 matrix of 0.7s has spectral radius "
                  f"{c.matrix_spectral_radius:.2g} (gain {c.matrix_gain[-1]:.2g} after 50 steps), and "
                  f"random N(0, 0.7^2) entries give {c.gaussian_spectral_radius:.2g}."),
    }


def figures() -> list[Figure]:
    """The chain section's figures: scalar and linear chains per activation and weight."""
    cap = _captions()
    return [
        Figure("chain_relu_w8", "ReLU chain, w = 8, depths 1-3", cap["relu"], lambda: _w8("relu")),
        Figure("chain_tanh_w8", "tanh chain, w = 8, depths 1-3", cap["tanh"], lambda: _w8("tanh")),
        Figure("chain_sigmoid_w8", "sigmoid chain, w = 8, b = 0: flatter with depth", cap["sigmoid"],
               lambda: _w8("sigmoid")),
        Figure("chain_sigmoid_steep", "sigmoid chain with biases -w/2: steeper with depth", cap["steep"],
               _sigmoid_steep),
        Figure("chain_bumps", "A 3-unit tanh network with many steep slopes", cap["bumps"], _bumps),
        Figure("chain_factors", "Which factor of the chain rule is tiny?", cap["factors"], _factors),
        Figure("chain_powers", "w**L: 0.6, 1.6 and 2.34 over depth", cap["powers"], _powers,
               table=_powers_table),
        Figure("chain_deep_identity", "Deep linear network, W = 1.5 I and 0.5 I", cap["identity"],
               _deep_identity),
        Figure("chain_deep_gaussian", "Deep linear network, Gaussian W: mean vs typical", cap["gaussian"],
               _deep_gaussian),
        Figure("chain_w07_claim", "Can a weight of 0.7 explode?", cap["claim"], _claim),
    ]
