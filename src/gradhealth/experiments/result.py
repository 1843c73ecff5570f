"""The outcome of a trainability experiment: measured grid, theory curve, fitted k, the picture.

No torch here: a result loads from JSON (:meth:`TrainabilityResult.from_dict`) and plots
anywhere NumPy and matplotlib are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..events import jsonable
from ..theory.trainability import PAPER_K, DepthMultipleFit, DepthScaleCurve, depth_scale_curve
from ._spec import TrainabilitySpec

__all__ = ["TrainabilityResult"]


def _arr(v) -> np.ndarray:
    return np.array([[math.nan if (x is None or x == "nan") else float(x) for x in row] for row in v])


@dataclass(frozen=True)
class TrainabilityResult:
    """Measured train accuracy over a ``(depth, sigma_w2)`` grid, with the mean-field prediction.

    Arrays have shape ``(len(spec.depths), len(spec.sigma_w2))``: rows are depths.

    Attributes:
        spec: the experiment (grid and training settings).
        accuracy: final train accuracy per cell (``nan``: the output became non-finite).
        loss_init, loss_final: cross-entropy on the whole training set before and after.
        gain: backward gain per layer at init measured by the probe (see
            :func:`gradhealth.experiments._cells.init_gain`); ``nan`` where not measurable.
        diverged: the loss became non-finite during training.
        curve: the theory (``xi_c`` per ``sigma_w2``, the critical ``sigma_w2``) for the
            built-in nets; ``None`` for a user's model family. For the residual and layernorm
            variants it is the *plain* net's theory, drawn to show how far the boundary moved.
        fit: the fitted ``k`` (:func:`gradhealth.theory.trainability.fit_depth_multiple`), or
            ``None`` without a curve.
        seconds: wall time of the run; cached: cells read from the cache; jobs: processes used.
    """

    spec: TrainabilitySpec
    accuracy: np.ndarray = field(repr=False)
    loss_init: np.ndarray = field(repr=False)
    loss_final: np.ndarray = field(repr=False)
    gain: np.ndarray = field(repr=False)
    diverged: np.ndarray = field(repr=False)
    curve: DepthScaleCurve | None = field(default=None, repr=False)
    fit: DepthMultipleFit | None = None
    seconds: float = 0.0
    cached: int = 0
    jobs: int = 1

    @property
    def trainable(self) -> np.ndarray:
        """``accuracy >= spec.threshold`` per cell (non-finite: not trainable)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.accuracy, nan=-1.0) >= self.spec.threshold

    @property
    def column_gain(self) -> np.ndarray:
        """Median measured gain per ``sigma_w2`` column (the x axis of a factory run)."""
        with np.errstate(all="ignore"):
            g = np.where(np.isfinite(self.gain), self.gain, np.nan)
            return np.array([np.nanmedian(col) if np.isfinite(col).any() else math.nan for col in g.T])

    def summary(self) -> str:
        """A few lines: the grid, the criterion, the fitted k and its agreement."""
        s = self.spec
        n = self.accuracy.size
        lines = [f"{s.activation} ({s.variant}): {len(s.depths)} depths x {len(s.sigma_w2)} "
                 f"{'scales' if s.variant == 'factory' else 'sigma_w2'} on {s.data}, {s.steps} SGD steps "
                 f"(lr {s.lr:g}, momentum {s.momentum:g}, batch {s.batch_size}), width {s.width}, "
                 f"sigma_b2 {s.sigma_b2:g}, seed {s.seed}",
                 f"trainable (train accuracy >= {s.threshold:g}): {int(self.trainable.sum())} of {n} cells; "
                 f"{self.cached} from cache; {self.seconds:.1f} s on {self.jobs} process(es)"]
        if self.curve is not None and math.isfinite(self.curve.critical):
            lines.append(f"critical sigma_w2 = {self.curve.critical:.4g} (chi_1 = 1 at sigma_b2 = {s.sigma_b2:g})")
        if self.fit is not None and math.isfinite(self.fit.k):
            f = self.fit
            against = "" if s.variant == "plain" else " (against the plain net's xi_c)"
            lines.append(f"measured k = {f.k:.3g}{against}: depth < k xi_c agrees with {f.agreement:.0%} of "
                         f"{f.cells} cells (any k in ({f.k_low:.3g}, {f.k_high:.3g}) does); the paper's "
                         f"k = {PAPER_K:g} agrees with {f.agreement_paper:.0%}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """Plain JSON types (NaN/Inf as strings): everything :meth:`from_dict` needs."""
        return jsonable({"spec": self.spec.to_dict(), "accuracy": self.accuracy, "loss_init": self.loss_init,
                         "loss_final": self.loss_final, "gain": self.gain,
                         "diverged": self.diverged.astype(int), "trainable": self.trainable.astype(int),
                         "curve": self.curve.to_dict() if self.curve is not None else None,
                         "fit": self.fit.to_dict() if self.fit is not None else None,
                         "seconds": self.seconds, "cached": self.cached, "jobs": self.jobs})

    @classmethod
    def from_dict(cls, d: dict) -> TrainabilityResult:
        """A result from :meth:`to_dict`'s output (the theory curve is recomputed, torch-free)."""
        spec = TrainabilitySpec.from_dict(d["spec"])
        curve = fit = None
        if d.get("curve") is not None:
            curve = depth_scale_curve(spec.activation, spec.sigma_w2, spec.sigma_b2)
        if d.get("fit") is not None:
            fit = DepthMultipleFit(**{k: float(v) if k not in ("cells", "ties") else int(v)
                                      for k, v in d["fit"].items()})
        return cls(spec=spec, accuracy=_arr(d["accuracy"]), loss_init=_arr(d["loss_init"]),
                   loss_final=_arr(d["loss_final"]), gain=_arr(d["gain"]),
                   diverged=np.array(d["diverged"], dtype=bool), curve=curve, fit=fit,
                   seconds=float(d["seconds"]), cached=int(d["cached"]), jobs=int(d["jobs"]))

    def plot(self, ax=None, *, colorbar: bool = True):
        """The measured heatmap with ``depth = k xi_c`` for ``k = 6`` and the fitted ``k``.

        Colour is the final train accuracy (grey: diverged); dots mark trainable cells. For the
        built-in nets the x axis is ``sigma_w2`` with the critical ``sigma_w2`` dotted; for a
        user's model family it is the probe's measured backward gain per layer at init
        (median over the column's depths), with the edge of chaos (gain 1) dotted.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 4.6))
        s = self.spec
        factory = s.variant == "factory"
        x = self.column_gain if factory else np.asarray(s.sigma_w2)
        order = np.argsort(x) if factory else np.arange(x.size)
        x = x[order]
        depths = np.asarray(s.depths, dtype=float)
        acc = self.accuracy[:, order]
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.6")
        mesh = ax.pcolormesh(x, depths, np.ma.masked_invalid(acc), shading="nearest", cmap=cmap,
                             vmin=0.0, vmax=1.0)
        if colorbar:
            ax.figure.colorbar(mesh, ax=ax, label=f"train accuracy after {s.steps} SGD steps")
        ii, jj = np.nonzero(self.trainable[:, order])
        ax.plot(x[jj], depths[ii], "w.", ms=3, label=f"trainable (accuracy >= {s.threshold:g})")
        if self.curve is not None:
            self._plot_theory(ax, depths)
        else:
            ax.axvline(1.0, color="k", ls=":", lw=1.2, label="gain 1 per layer (edge of chaos)")
        ax.set_yscale("log", base=2)
        ax.set_yticks(depths, [f"{d:g}" for d in depths])
        ax.set_ylim(depths[0] / 1.2, depths[-1] * 1.2)
        ax.set_xlabel("measured backward gain per layer at init (probe)" if factory
                      else r"$\sigma_w^2$ (weight variance x fan-in)")
        ax.set_ylabel("depth (hidden layers)")
        ax.set_title(f"{s.activation} ({s.variant}) on {s.data}: trainable region")
        # a grey legend box: the white dots and dashes drawn on the heatmap stay visible in it
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7, facecolor="0.6",
                  framealpha=1.0, edgecolor="0.6", markerscale=2.5)
        return ax

    def _plot_theory(self, ax, depths) -> None:
        s = self.spec
        lo, hi = s.sigma_w2[0], s.sigma_w2[-1]
        w = np.linspace(lo, hi, 400)
        if math.isfinite(self.curve.critical) and lo < self.curve.critical < hi:
            w = np.sort(np.append(w, self.curve.critical))
        fine = depth_scale_curve(s.activation, w, s.sigma_b2, fast=True)
        top = depths[-1] * 1.2
        with np.errstate(all="ignore"):
            ax.plot(w, np.minimum(PAPER_K * fine.xi_c, top * 10), "w--", lw=1.5,
                    label=rf"$6\,\xi_c$ (paper, {'plain-net ' if s.variant != 'plain' else ''}theory)")
            if self.fit is not None and math.isfinite(self.fit.k):
                ax.plot(w, np.minimum(self.fit.k * fine.xi_c, top * 10), "r-", lw=1.5,
                        label=rf"$k\,\xi_c$, fitted k = {self.fit.k:.2g}")
        if math.isfinite(self.curve.critical):
            ax.axvline(self.curve.critical, color="k", ls=":", lw=1.2,
                       label=rf"critical $\sigma_w^2$ = {self.curve.critical:.3g}")
