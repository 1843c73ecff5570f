"""Gallery section: the probe on broken and fixed models, before any training.

Each figure probes a pair of models built in code (random weights, random batch; no data
needed) and draws :meth:`gradhealth.probe.ProbeResult.plot` side by side. Captions quote the
numbers the probe measured. Everything runs in a few seconds on one core.
"""

from __future__ import annotations

import functools
import math

from ._figure import Figure

TITLE = "Probe: is this model healthy before training?"
INTRO = ("`gradhealth.probe(model, batch)` runs one batch forward and a few backward passes and "
         "reports, per layer, how strongly the backward signal reaches it (the *backward gain*, "
         "1 at the output), the gradient scale coefficient of Philipp et al., dead and saturated "
         "units, and a verdict with prescriptions. Each pair below is the same architecture, "
         "broken and fixed.")

WIDTH, BATCH = 64, 64


def _fmt(x) -> str:
    from ..report.probe_view import fmt

    return fmt(x)


def _mlp(depth: int, act: str, init: str, *, sigma_w2: float = 1.0, sigma_b2: float = 0.0,
         seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)  # nn.Linear draws its default init from the global RNG
    g = torch.Generator().manual_seed(seed)
    act_mod = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}[act]
    layers, fan_in = [], 32
    for _ in range(depth - 1):
        lin = nn.Linear(fan_in, WIDTH)
        with torch.no_grad():
            if init == "gaussian":
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * math.sqrt(sigma_w2 / fan_in))
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * math.sqrt(sigma_b2))
            elif init == "he":
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                lin.bias.zero_()
            else:  # PyTorch's default init, drawn from our generator
                bound = 1.0 / math.sqrt(fan_in)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=g) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=g) * 2 - 1) * bound)
        layers += [lin, act_mod()]
        fan_in = WIDTH
    layers.append(nn.Linear(WIDTH, 10))
    return nn.Sequential(*layers), torch.randn(BATCH, 32, generator=g)


def _rnn(rho: float, steps: int = 100, seed: int = 0, fixed: bool = False):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 32, batch_first=True)
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    net = Net()
    with torch.no_grad():
        w = torch.randn(32, 32, generator=g)
        w *= rho / torch.linalg.eigvals(w).abs().max()
        net.rnn.weight_hh_l0.copy_(w)
    if fixed:
        from ..remedies import critical_

        torch.manual_seed(seed)
        critical_(net, distribution="orthogonal")
    return net, torch.randn(16, steps, 4, generator=g)


def _critical_tanh(sigma_b2: float) -> float:
    try:
        from ..theory.criticality import critical_sigma_w2

        return float(critical_sigma_w2("tanh", sigma_b2))
    except Exception:  # the explain pillar ships with gradhealth; 1.0 is exact at sigma_b2 = 0
        return 1.0


@functools.lru_cache(maxsize=None)
def _results():
    import torch

    from ..probe import probe

    torch_state = torch.random.get_rng_state()
    try:
        crit = _critical_tanh(0.05)

        def run(pair):  # the plots show no spectrum: skip the Jacobian to stay fast
            return probe(*pair, jacobian=False)

        pairs = {
            "tanh": (run(_mlp(50, "tanh", "gaussian", sigma_w2=4.0, sigma_b2=0.05)),
                     run(_mlp(50, "tanh", "gaussian", sigma_w2=crit, sigma_b2=0.05)), crit),
            "sigmoid": (run(_mlp(20, "sigmoid", "default")), run(_mlp(20, "relu", "he")), None),
            "rnn": (run(_rnn(3.0)), run(_rnn(3.0, fixed=True)), None),
        }
    finally:
        torch.random.set_rng_state(torch_state)
    return pairs


def _pair_figure(key: str, titles: tuple[str, str], what: str = "layers"):
    import matplotlib.pyplot as plt

    broken, fixed, _ = _results()[key]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True, constrained_layout=True)
    for ax, res, title in zip(axes, (broken, fixed), titles):
        res.plot(ax=ax, what=what)
        ax.set_title(f"{title}\nverdict: {res.verdict}", fontsize=10)
    return fig


def _first_ratio(res) -> float | None:
    """Gain of the first layer relative to the output-most one."""
    for lr in res.layers:
        if lr.gain_ratio is not None:
            return lr.gain_ratio
    return None


def _mf(res) -> str:
    mf = res.meanfield
    if mf is None:
        return ""
    th = f" (mean-field theory {_fmt(mf.chi_1_theory)})" if mf.chi_1_theory is not None else ""
    return f"chi_1 measured {_fmt(mf.chi_1_measured)}{th}"


def _prescriptions_md(res, limit: int = 4) -> str:
    if not res.prescriptions:
        return "_no prescription: the probe raised no alarm._"
    rows = ["| # | change | code |", "|---|---|---|"]
    for p in res.prescriptions[:limit]:
        rows.append(f"| {p.rank} | {p.action} | `{p.code.replace('|', '/')}` |")
    return "\n".join(rows)


def figures() -> list[Figure]:
    """The probe section's figures: broken models probed, then probed again after the prescribed cure."""
    res = _results()
    tb, tf, crit = res["tanh"]
    sb, sf, _ = res["sigmoid"]
    rb, rf, _ = res["rnn"]
    rts = rb.recurrent[0] if rb.recurrent else None
    rts_f = rf.recurrent[0] if rf.recurrent else None
    return [
        Figure(
            "probe_tanh_chaos",
            "50-layer tanh MLP: chaotic init (sigma_w2 = 4) vs the edge of chaos",
            f"Left: weights N(0, 4/fan_in), biases N(0, 0.05). The backward gain grows "
            f"x{_fmt(tb.findings[0].evidence.get('growth_per_layer') if tb.findings else None)} per "
            f"layer towards the input; the first layer sees {_fmt(_first_ratio(tb))}x the signal of "
            f"the last ({_mf(tb)}): verdict **{tb.verdict}**. Right: the same net at the critical "
            f"sigma_w2 = {_fmt(crit)} for sigma_b2 = 0.05, where chi_1 = 1: first/last "
            f"{_fmt(_first_ratio(tf))} ({_mf(tf)}), verdict **{tf.verdict}**.",
            draw=lambda: _pair_figure("tanh", ("tanh, sigma_w2 = 4 (chaotic)",
                                               f"tanh, sigma_w2 = {_fmt(crit)} (critical)")),
            table=lambda: "Prescriptions for the chaotic net:\n\n" + _prescriptions_md(tb)),
        Figure(
            "probe_sigmoid_vs_relu",
            "20-layer MLP: sigmoid with PyTorch's default init vs ReLU with He init",
            f"Left: sigmoid' <= 1/4 and default weights (variance 1/(3 fan_in)) shrink the backward "
            f"signal x{_fmt(sb.findings[0].evidence.get('growth_per_layer') if sb.findings else None)} "
            f"per layer; the first layer gets {_fmt(_first_ratio(sb))} of the last layer's signal "
            f"({_mf(sb)}): verdict **{sb.verdict}**. Right: ReLU with He init (sigma_w2 = 2, the "
            f"critical point for ReLU): first/last {_fmt(_first_ratio(sf))}, verdict "
            f"**{sf.verdict}**. Zeros (underflow) are drawn at the bottom edge, not dropped.",
            draw=lambda: _pair_figure("sigmoid", ("sigmoid, default init", "ReLU, He init"))),
        Figure(
            "probe_rnn_time",
            "Vanilla RNN over 100 steps: recurrent spectral radius 3 vs critical orthogonal init",
            "Time is depth: the probe replays nn.RNN step by step with its own weights and measures "
            "the gradient with respect to the hidden state at every step. Left: spectral radius 3, "
            f"the gradient at step 0 is {_fmt(rts.ratio if rts else None)}x the one at the last step "
            f"(x{_fmt(rts.growth_per_step if rts else None)} per step): verdict **{rb.verdict}**. "
            f"Right: the same net after `gradhealth.remedies.critical_(net, distribution='orthogonal')` "
            f"(critical variance for tanh with the input as extra bias; every singular value equal): "
            f"worst/last {_fmt(rts_f.ratio if rts_f else None)}, verdict **{rf.verdict}**.",
            draw=lambda: _pair_figure("rnn", ("RNN, spectral radius 3", "RNN, critical_ (orthogonal)"),
                                      what="time")),
    ]
