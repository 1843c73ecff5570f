"""Trainability from mean field: the prediction side of "trainable iff depth < ~6 xi_c".

Schoenholz et al. 2017 ("Deep information propagation", section 5 and their figures 5-6) trained
deep fully connected nets on MNIST/CIFAR-10 over a ``(sigma_w2, depth)`` grid and found the
trainable region bounded by ``depth = k * xi_c(sigma_w2)`` with ``k`` about 6, where ``xi_c`` is
the correlation depth scale of :mod:`gradhealth.theory.meanfield`. This module is the torch-free
half of that experiment:

* :func:`depth_scale_curve` -- ``xi_c`` (and ``chi_1``) over a ``sigma_w2`` grid at one
  ``sigma_b2``, with the critical ``sigma_w2`` (:func:`~gradhealth.theory.criticality.critical_sigma_w2`);
  the numbers are the mean-field code's own (``_analyze_arrays``, exact quadrature), not re-derived;
* :func:`fit_depth_multiple` -- the ``k`` whose prediction ``depth < k * xi_c`` agrees with the
  most measured cells (trainable or not), with the whole range of ``k`` that ties and the
  agreement of the paper's ``k = 6`` for comparison.

The training itself (torch) lives in :mod:`gradhealth.experiments`.

Example:
    >>> import numpy as np
    >>> from gradhealth.theory.trainability import depth_scale_curve, fit_depth_multiple
    >>> curve = depth_scale_curve("tanh", [1.0, 1.5, 3.0], sigma_b2=0.05)
    >>> np.round(curve.xi_c, 2).tolist()
    [3.63, 15.79, 9.05]
    >>> fit = fit_depth_multiple(curve.xi_c, [10, 40], [[True, True, True], [False, True, False]])
    >>> fit.agreement, fit.k_low < fit.k < fit.k_high
    (1.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_real
from ..errors import ParameterError
from .criticality import _check_grid, _check_rho, _critical
from .meanfield import _analyze_arrays, kernel_for

__all__ = ["DepthScaleCurve", "DepthMultipleFit", "depth_scale_curve", "fit_depth_multiple",
           "PAPER_K"]

#: Schoenholz et al. 2017: networks trained up to about this many correlation depth scales.
PAPER_K = 6.0


@dataclass(frozen=True)
class DepthScaleCurve:
    """The mean-field depth scale over a ``sigma_w2`` grid at one ``sigma_b2``.

    Attributes:
        activation: activation name.
        sigma_w2: the grid (1-D).
        sigma_b2: the bias variance.
        xi_c: correlation depth scale ``-1 / ln(chi_c)`` at each ``sigma_w2`` (``inf`` where
            correlations never decay exponentially: at the critical point, and for relu-like
            activations on the exploding side, where ``c* = 1``).
        chi_1: squared-gradient growth per layer at each ``sigma_w2``.
        critical: the critical ``sigma_w2`` (``chi_1 = 1``) at ``sigma_b2``; ``nan`` if none.
    """

    activation: str
    sigma_w2: np.ndarray = field(repr=False)
    sigma_b2: float
    xi_c: np.ndarray = field(repr=False)
    chi_1: np.ndarray = field(repr=False)
    critical: float

    def depth(self, k: float = PAPER_K) -> np.ndarray:
        """The predicted trainable depth ``k * xi_c`` at each ``sigma_w2``."""
        return float(k) * self.xi_c

    def to_dict(self) -> dict:
        """Plain lists, for JSON (through :func:`gradhealth.events.jsonable`)."""
        return {"activation": self.activation, "sigma_w2": self.sigma_w2, "sigma_b2": self.sigma_b2,
                "xi_c": self.xi_c, "chi_1": self.chi_1, "critical": self.critical}


def depth_scale_curve(activation, sigma_w2, sigma_b2: float = 0.05, *,
                      dropout_keep: float = 1.0, fast: bool = False) -> DepthScaleCurve:
    """``xi_c`` and ``chi_1`` at each ``sigma_w2`` of a grid, and the critical ``sigma_w2``.

    Args:
        activation: as for :func:`~gradhealth.theory.meanfield.analyze`.
        sigma_w2: 1-D array of weight variances times fan-in (finite, ``>= 0``, non-empty).
        sigma_b2: bias variance.
        dropout_keep: keep probability ``rho`` of dropout (1: none).
        fast: solve the correlation map from its Mehler series, as
            :func:`~gradhealth.theory.criticality.phase_diagram` does (for drawing a fine
            curve: 400 points of tanh in about 0.5 s instead of 7 s). Within 1e-6 relative of
            the exact values for smooth activations (tanh, erf, selu, gelu, sigmoid); about 2%
            for kinked ones such as hard_tanh.

    Returns:
        A :class:`DepthScaleCurve`; with ``fast=False`` its values equal
        ``analyze(activation, w, sigma_b2).xi_c`` point by point (the same exact computation,
        vectorised over the grid).
    """
    owner = "depth_scale_curve"
    w = _check_grid(sigma_w2, "sigma_w2", owner)
    b = check_real(sigma_b2, "sigma_b2", owner, low=0.0, fix="pass a bias variance >= 0, e.g. 0.05.")
    rho = _check_rho(dropout_keep, owner)
    kern = kernel_for(activation, owner=owner)
    r = _analyze_arrays(kern, w, np.full(w.shape, b), rho, fast=bool(fast))
    crit = float(_critical(kern, np.array([b]), rho)[0][0])
    return DepthScaleCurve(activation=kern.name, sigma_w2=w, sigma_b2=b, xi_c=r["xi_c"],
                           chi_1=r["chi_1"], critical=crit)


@dataclass(frozen=True)
class DepthMultipleFit:
    """The measured multiple ``k`` in "trainable iff depth < k * xi_c".

    Attributes:
        k: the fitted multiple: the geometric middle of the best interval ``(k_low, k_high)``
            (its finite end when the interval is unbounded; ``nan`` when no cell could be used).
        k_low, k_high: every ``k`` strictly inside this interval reaches the best agreement
            (the first such interval from below when several tie).
        agreement: share of the used cells where ``depth < k * xi_c`` equals "trainable".
        agreement_paper: the same share at the paper's ``k = 6`` (:data:`PAPER_K`).
        cells: number of cells used (those with a finite or infinite ``xi_c``; ``nan`` ones are
            left out).
        ties: number of disjoint ``k`` intervals that reach the best agreement.
    """

    k: float
    k_low: float
    k_high: float
    agreement: float
    agreement_paper: float
    cells: int
    ties: int = 1

    def to_dict(self) -> dict:
        """Plain numbers, for JSON (through :func:`gradhealth.events.jsonable`)."""
        return {"k": self.k, "k_low": self.k_low, "k_high": self.k_high, "agreement": self.agreement,
                "agreement_paper": self.agreement_paper, "cells": self.cells, "ties": self.ties}


def _check_fit_inputs(xi_c, depths, trainable):
    owner = "fit_depth_multiple"
    xi = np.atleast_1d(np.asarray(xi_c, dtype=float))
    d = np.atleast_1d(np.asarray(depths, dtype=float))
    if xi.ndim != 1 or xi.size == 0 or np.any(xi < 0):
        raise ParameterError("xi_c", owner, "a non-empty 1-D array of depth scales >= 0 (inf and nan "
                             "allowed)", xi_c, "pass DepthScaleCurve.xi_c.")
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ParameterError("depths", owner, "a non-empty 1-D array of depths > 0", depths,
                             "pass the depth grid, e.g. [4, 8, 16, 32].")
    t = np.asarray(trainable)
    if t.shape != (d.size, xi.size) or t.dtype.kind not in "bi":
        raise ParameterError("trainable", owner, f"a boolean array of shape (len(depths), len(xi_c)) "
                             f"= ({d.size}, {xi.size})", f"array of shape {t.shape}, dtype {t.dtype}",
                             "pass one row per depth and one column per sigma_w2.")
    return xi, d, t.astype(bool)


def _agreement(ratio: np.ndarray, trainable: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Share of cells where ``ratio < k`` (i.e. ``depth < k xi_c``) equals ``trainable``, per k."""
    pred = ratio[None, :] < k[:, None]
    return np.mean(pred == trainable[None, :], axis=1)


def fit_depth_multiple(xi_c, depths, trainable) -> DepthMultipleFit:
    """The ``k`` for which ``depth < k * xi_c`` best matches the measured trainable cells.

    Every cell ``(depth_i, sigma_w2_j)`` gives the ratio ``r_ij = depth_i / xi_c_j``; the
    prediction "trainable" at multiple ``k`` is ``r_ij < k``. The agreement (share of cells
    where prediction and measurement match) is a step function of ``k`` that changes only at
    the ratios, so it is evaluated exactly between every pair of consecutive ratios (and
    below the smallest, above the largest). The maximum is the reported agreement; the
    interval of ``k`` reaching it is ``(k_low, k_high)`` and ``k`` its geometric middle.
    Nothing is smoothed or interpolated: ``k`` is as sharp as the depth grid allows, and
    ``k_low``/``k_high`` say how sharp that is.

    Args:
        xi_c: depth scale per ``sigma_w2`` (length ``W``); ``inf`` predicts "trainable" at every
            depth, ``nan`` leaves the column out.
        depths: the depth grid (length ``D``, > 0).
        trainable: boolean array ``(D, W)``, the measured outcome.
    """
    xi, d, t = _check_fit_inputs(xi_c, depths, trainable)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d[:, None] / xi[None, :]               # inf where xi_c = 0, 0 where xi_c = inf
    use = ~np.isnan(ratio)
    r, tt = ratio[use], t[use]
    if r.size == 0:
        return DepthMultipleFit(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0)
    edges = np.unique(r[np.isfinite(r) & (r > 0)])
    # one probe k inside every interval between consecutive edges (and outside both ends)
    if edges.size:
        inner = np.sqrt(edges[:-1] * edges[1:])
        probes = np.concatenate([[edges[0] / 2.0], inner, [edges[-1] * 2.0]])
        lows = np.concatenate([[0.0], edges])
        highs = np.concatenate([edges, [math.inf]])
    else:
        probes, lows, highs = np.array([1.0]), np.array([0.0]), np.array([math.inf])
    agree = _agreement(r, tt, probes)
    best = float(agree.max())
    hit = np.flatnonzero(agree == best)
    ties = int(1 + np.count_nonzero(np.diff(hit) > 1))
    # the first run of consecutive best intervals: one interval of k
    stop = hit[0]
    while stop + 1 < agree.size and agree[stop + 1] == best:
        stop += 1
    lo, hi = float(lows[hit[0]]), float(highs[stop])
    if math.isinf(hi):
        k = lo if lo > 0 else math.inf
    elif lo == 0.0:
        k = hi
    else:
        k = math.sqrt(lo * hi)
    paper = float(_agreement(r, tt, np.array([PAPER_K]))[0])
    return DepthMultipleFit(k=k, k_low=lo, k_high=hi, agreement=best, agreement_paper=paper,
                            cells=int(r.size), ties=ties)
