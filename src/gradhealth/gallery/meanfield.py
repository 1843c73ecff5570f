"""Gallery section: mean-field signal propagation (:mod:`gradhealth.theory.meanfield`)."""

from __future__ import annotations

import math

import numpy as np

from ._figure import Figure

TITLE = "Mean field: order, chaos and the edge between them"
INTRO = ("A wide random network with weights `N(0, sigma_w2/n)` and biases `N(0, sigma_b2)` "
         "turns every input's squared length into the same `q*` within a few layers; after that "
         "each layer multiplies squared gradient norms by `chi_1`. `chi_1 < 1` is the ordered "
         "phase (gradients vanish, all inputs look alike), `chi_1 > 1` the chaotic one "
         "(gradients explode, nearby inputs are torn apart). Numbers from "
         "`gradhealth meanfield` and `gradhealth phase`.")

_ORDERED, _CHAOTIC, _SB2 = 1.2, 3.0, 0.05
_WIDTH, _NETS = 600, 2


def _phase(name: str, n: int):
    from ..theory.criticality import phase_diagram

    return phase_diagram(name, np.linspace(0.02, 4.0, n), np.linspace(0.0, 0.3, n))


def _draw_phase(name: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _phase(name, 160).plot(ax=ax)
    return fig


def _draw_maps():
    import matplotlib.pyplot as plt

    from ..theory.meanfield import analyze, correlation_map, length_map

    fig, (axq, axc) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    qs = np.linspace(0.0, 3.0, 200)
    cs = np.linspace(0.0, 1.0, 41)
    axq.plot(qs, qs, color="0.6", lw=1, ls="--", label="identity")
    axc.plot(cs, cs, color="0.6", lw=1, ls="--", label="identity")
    for sw2, color in ((_ORDERED, "tab:blue"), (_CHAOTIC, "tab:red")):
        r = analyze("tanh", sw2, _SB2)
        axq.plot(qs, length_map("tanh", qs, sw2, _SB2), color=color,
                 label=f"sigma_w2 = {sw2:g}: q* = {r.q_star:.3f}")
        q = 2.8                                    # cobweb from a long input
        for _ in range(6):
            q_next = float(length_map("tanh", q, sw2, _SB2))
            axq.plot([q, q, q_next], [q, q_next, q_next], color=color, lw=0.8, alpha=0.7)
            q = q_next
        axc.plot(cs, correlation_map("tanh", cs, sw2, _SB2), color=color,
                 label=f"sigma_w2 = {sw2:g}: c* = {r.c_star:.3f}, chi_c = {r.chi_c:.3f}")
        c = 0.3                                    # cobweb from two fairly different inputs
        for _ in range(8):
            c_next = float(correlation_map("tanh", c, sw2, _SB2))
            axc.plot([c, c, c_next], [c, c_next, c_next], color=color, lw=0.8, alpha=0.7)
            c = c_next
        axc.plot([r.c_star], [r.c_star], "o", color=color)
        axq.plot([r.q_star], [r.q_star], "o", color=color)
    axq.set(xlabel="q (layer l)", ylabel="q (layer l+1)", title=f"tanh length map, sigma_b2 = {_SB2:g}")
    axc.set(xlabel="c (layer l)", ylabel="c (layer l+1)", title="tanh correlation map at q*")
    axq.legend(fontsize=8)
    axc.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _depth_curves():
    from ..theory.criticality import phase_diagram

    w = np.linspace(0.3, 4.0, 600)
    b = np.array([0.01, 0.05, 0.2])
    return w, b, phase_diagram("tanh", w, b)


def _draw_depth():
    import matplotlib.pyplot as plt

    w, b, pd = _depth_curves()
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for i, (sb2, color) in enumerate(zip(b, ("tab:green", "tab:orange", "tab:purple"))):
        ax.plot(w, pd.xi_c[i], color=color, label=f"xi_c, sigma_b2 = {sb2:g}")
        ax.plot(w, pd.xi_q[i], color=color, ls=":", lw=1)
        ax.axvline(pd.critical[i], color=color, ls="--", lw=0.8)
    ax.plot([], [], color="k", ls=":", lw=1, label="xi_q (lengths)")
    ax.plot([], [], color="k", ls="--", lw=0.8, label="critical sigma_w2")
    ax.set_yscale("log")
    ax.set_ylim(0.3, 3e3)
    ax.set(xlabel="sigma_w2", ylabel="depth scale (layers)",
           title="tanh: correlations survive longest at the edge of chaos")
    ax.legend(fontsize=8)
    return fig


def _random_net(sw2, sb2, *, width=1000, depth=20, batch=16, seed=0):
    """q^l, c^l and the backprop squared-norm ratio per layer of one random tanh MLP."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((2, batch, width))
    h1, h2 = 3.0 * z1, 3.0 * (0.3 * z1 + math.sqrt(1 - 0.09) * z2)   # q^0 = 9, c^0 = 0.3
    ws, pre, q, c = [], [], [], []
    for _ in range(depth):
        W = rng.standard_normal((width, width)) * math.sqrt(sw2 / width)
        bias = rng.standard_normal(width) * math.sqrt(sb2)
        ws.append(W)
        pre.append(h1)
        h1, h2 = np.tanh(h1) @ W.T + bias, np.tanh(h2) @ W.T + bias
        q1, q2 = np.mean(h1 ** 2), np.mean(h2 ** 2)
        q.append(0.5 * (q1 + q2))
        c.append(np.mean(h1 * h2) / math.sqrt(q1 * q2))
    delta = rng.standard_normal((batch, width))
    norms = [np.sum(delta ** 2)]
    for l in range(depth - 1, 0, -1):
        delta = (delta @ ws[l]) * (1.0 - np.tanh(pre[l]) ** 2)
        norms.append(np.sum(delta ** 2))
    g = np.array(norms[::-1])
    return np.array(q), np.array(c), g / g[-1]


def _draw_mc():
    import matplotlib.pyplot as plt

    from ..theory.meanfield import analyze, correlation_map, length_map

    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.8))
    depth = 16
    for sw2, color in ((_ORDERED, "tab:blue"), (_CHAOTIC, "tab:red")):
        runs = [_random_net(sw2, _SB2, depth=depth, width=_WIDTH, seed=s) for s in range(_NETS)]
        q_mc, c_mc, g_mc = (np.mean([r[i] for r in runs], axis=0) for i in range(3))
        q, c, q_th, c_th = 9.0, 0.3, [], []
        for _ in range(depth):
            c = float(correlation_map("tanh", c, sw2, _SB2, q=q))
            q = float(length_map("tanh", q, sw2, _SB2))
            q_th.append(q), c_th.append(c)
        r = analyze("tanh", sw2, _SB2)
        layers = np.arange(1, depth + 1)
        axes[0].plot(layers, q_mc, "o", color=color, ms=4, label=f"net, sigma_w2 = {sw2:g}")
        axes[0].plot(layers, q_th, "-", color=color, label="length map")
        axes[1].plot(layers, c_mc, "o", color=color, ms=4)
        axes[1].plot(layers, c_th, "-", color=color)
        gl = np.arange(1, g_mc.size + 1)
        axes[2].semilogy(gl, g_mc, "o", color=color, ms=4, label=f"net, sigma_w2 = {sw2:g}")
        axes[2].semilogy(gl, r.chi_1 ** (gl[-1] - gl), "-", color=color,
                         label=f"chi_1^(L-l), chi_1 = {r.chi_1:.3f}")
    axes[0].set(xlabel="layer", ylabel="q (mean squared pre-activation)", title="lengths")
    axes[1].set(xlabel="layer", ylabel="correlation of two inputs", title="correlations")
    axes[2].set(xlabel="layer", ylabel="||grad||^2 relative to the top", title="backprop")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"random tanh nets, width {_WIDTH}, mean of {_NETS} (dots) vs mean-field theory "
                 f"(lines), sigma_b2 = {_SB2:g}", fontsize=10)
    fig.tight_layout()
    return fig


def figures() -> list[Figure]:
    """The mean-field section's figures: length and correlation maps, chi_1, the phase diagram."""
    from ..theory.criticality import critical_sigma_w2
    from ..theory.meanfield import analyze

    crit = critical_sigma_w2("tanh", _SB2)
    he, lecun = analyze("tanh", 2.0, _SB2), analyze("tanh", 1.0, _SB2)
    o, ch = analyze("tanh", _ORDERED, _SB2), analyze("tanh", _CHAOTIC, _SB2)
    peak = analyze("tanh", crit * 0.95, _SB2)
    return [
        Figure("meanfield_phase_tanh", "tanh phase diagram: chi_1 and the critical line",
               f"Red is where squared gradients grow per layer, blue where they shrink; the black "
               f"line is `chi_1 = 1`, which for tanh starts at sigma_w2 = 1 with no bias and "
               f"reaches {crit:.3f} at sigma_b2 = {_SB2:g}. With that bias LeCun/Xavier "
               f"(sigma_w2 = 1) is ordered (`chi_1` = {lecun.chi_1:.3f}) and He (sigma_w2 = 2) "
               f"is mildly chaotic (`chi_1` = {he.chi_1:.3f}).",
               lambda: _draw_phase("tanh")),
        Figure("meanfield_phase_relu", "ReLU phase diagram: a vertical line at sigma_w2 = 2",
               "For ReLU `chi_1 = sigma_w2 / 2` whatever the bias, so the critical line is the "
               "vertical line sigma_w2 = 2 and He initialisation sits exactly on it. Right of the "
               "line (hatched) the length map has no fixed point at all (q* = inf: activations grow "
               "without bound), and correlations still go to 1, only polynomially: ReLU nets "
               "explode rather than become chaotic.",
               lambda: _draw_phase("relu")),
        Figure("meanfield_maps_tanh", "Length and correlation maps, ordered vs chaotic",
               f"Left: from a long input the length settles to q* = {o.q_star:.3f} "
               f"(sigma_w2 = {_ORDERED:g}) or {ch.q_star:.3f} (sigma_w2 = {_CHAOTIC:g}) within "
               f"a few layers (xi_q = {o.xi_q:.2f} and {ch.xi_q:.2f}). Right: in the ordered "
               f"net every pair of inputs ends perfectly correlated (c* = 1), while in the "
               f"chaotic one the correlation falls to c* = {ch.c_star:.3f}: the net forgets "
               f"which inputs were close.",
               _draw_maps),
        Figure("meanfield_depth_scale", "Depth scale xi_c peaks at the critical line",
               f"`xi_c = -1/ln(chi_c)` counts the layers over which two inputs' correlation "
               f"still carries information; Schoenholz et al. 2017 could train tanh nets up to "
               f"about 6 xi_c layers. It diverges at the critical sigma_w2 (dashed); 5% below it, "
               f"at sigma_b2 = {_SB2:g}, xi_c = {peak.xi_c:.0f} already allows about "
               f"{peak.trainable_depth:.0f} layers, against {lecun.trainable_depth:.0f} for "
               f"LeCun/Xavier.",
               _draw_depth),
        Figure("meanfield_random_net", "A real random network follows the maps",
               f"Dots average {_NETS} NumPy tanh MLPs of width {_WIDTH} (inputs with q = 9, "
               f"correlation 0.3); "
               f"lines are the mean-field maps iterated from the same start. Backpropagated "
               f"squared gradient norms fall or rise by chi_1 per layer "
               f"({o.chi_1:.3f} ordered, {ch.chi_1:.3f} chaotic) once the lengths have "
               f"settled. Finite width adds noise: one net's correlation wanders by about 0.02 around "
               f"the curve.",
               _draw_mc),
    ]
