"""Gallery section: trainability on real data (:mod:`gradhealth.experiments`).

The coarse grid of ``gradhealth trainability --grid coarse`` (7 sigma_w2 x 5 depths, 300 SGD
steps per cell on digits) for tanh and ReLU: about 15-25 s each on 2 cores.
"""

from __future__ import annotations

import functools
import math
import os

from ._figure import Figure

TITLE = "Trainability: which depths train at which initialisation"
INTRO = ("Mean-field theory predicts that a deep net trains only while its depth stays below a "
         "few correlation depth scales `xi_c(sigma_w2)` (Schoenholz et al. 2017: about 6 xi_c on "
         "MNIST and CIFAR-10). Here every cell is a real net, trained from its initialisation "
         "for 300 SGD steps on digits; the figure shows what trained, the theory's `6 xi_c` and "
         "the multiple `k` that fits these cells best. `gradhealth trainability` runs it, on "
         "finer grids and for your own model family.")

#: The grid of ``gradhealth trainability --grid coarse`` (tests check the two agree).
SIGMA_W2 = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
DEPTHS = (4, 8, 16, 32, 64)


@functools.lru_cache(maxsize=None)
def measure(activation: str):
    """The coarse grid's :class:`~gradhealth.experiments.TrainabilityResult` (cached per process)."""
    from ..experiments import RunOptions, trainability

    jobs = max(1, min(2, os.cpu_count() or 1))
    return trainability(activation, SIGMA_W2, DEPTHS, options=RunOptions(jobs=jobs))


def _draw(activation: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), constrained_layout=True)
    measure(activation).plot(ax=ax)
    return fig


def table(activation: str) -> str:
    """Markdown: the fitted k, its agreement with the cells, the paper's k, the time taken."""
    r = measure(activation)
    fit = r.fit
    k = f"{fit.k:.3g}" if fit is not None and math.isfinite(fit.k) else "-"
    agree = f"{100 * fit.agreement:.0f}%" if fit is not None else "-"
    paper = f"{100 * fit.agreement_paper:.0f}%" if fit is not None else "-"
    return ("| cells | trainable | critical sigma_w2 | fitted k | cells it explains | paper's k = 6 "
            "explains | seconds |\n|---|---|---|---|---|---|---|\n"
            f"| {r.trainable.size} | {int(r.trainable.sum())} | {r.curve.critical:.3g} | {k} | {agree} | "
            f"{paper} | {r.seconds:.0f} |")


def figures() -> list[Figure]:
    """The trainability section's figures: tanh and ReLU on the coarse grid."""
    return [
        Figure("trainability_tanh", "tanh: the trainable region follows a multiple of xi_c",
               "Yellow cells trained (train accuracy at least 0.5 after 300 steps; chance is 0.1). "
               "Near the critical sigma_w2 (dotted) `xi_c` diverges; away from it, in the ordered "
               "phase on the left and the chaotic one on the right, the deep nets stop training "
               "about where `k xi_c` (red, fitted to these cells) falls below their depth, with the "
               "paper's `6 xi_c` (white dashes) close by. Depth 64 trains nowhere within this "
               "budget, not even at the critical point: there the 300 steps, not the "
               "initialisation, are the limit. The table has the fitted k and how many cells each "
               "k explains.",
               lambda: _draw("tanh"), lambda: table("tanh")),
        Figure("trainability_relu", "ReLU: one edge, at He initialisation",
               "For ReLU `chi_1 = sigma_w2 / 2`: left of sigma_w2 = 2 the signal dies with depth, "
               "and `xi_c` bounds the trainable depths as for tanh. Right of it there is no chaotic "
               "phase for `xi_c` to describe: the activations and gradients grow like "
               "`chi_1^depth` and the deep nets diverge (grey), a different failure the curve "
               "does not draw.",
               lambda: _draw("relu"), lambda: table("relu")),
    ]
