"""Statistics of one activation tensor: scale, dead units, saturation, non-finite entries.

The *family* of an activation decides which fractions are meaningful:

* ``"relu"`` (relu, relu6): an inactive unit outputs exactly 0, so ``zero_frac`` counts
  inactive entries and ``dead_frac`` the units that are 0 on the whole batch (dead units: they
  pass no gradient at all).
* ``"saturating"`` (tanh, sigmoid, hardtanh, softsign, hardsigmoid): an entry is *saturated*
  when it lies within 1% of the half-range of a bound, e.g. ``|tanh| >= 0.99`` or
  ``sigmoid <= 0.005``; there the derivative is below about 2% of its maximum
  (``1 - 0.99**2 = 0.0199``; ``0.005 * 0.995 / 0.25 = 0.0199``).
* anything else (``"smooth"``: gelu, silu, elu, ...; ``"linear"``): neither fraction applies.

Fractions that do not apply are NaN (gradhealth says what it could not measure rather than
report a misleading 0).
"""

from __future__ import annotations

import math

import torch

from .. import _vocab
from .._checks import check_int
from ..errors import ParameterError

__all__ = ["activation_stats", "activation_family", "ACTIVATION_FAMILIES", "STAT_KEYS"]

#: Keys of the dict returned by :func:`activation_stats`, always all present.
STAT_KEYS = ("mean", "std", "zero_frac", "dead_frac", "saturated_frac", "nonfinite")

#: Activation name -> (family, bounds of the output or None); from :mod:`gradhealth._vocab`.
ACTIVATION_FAMILIES: dict[str, tuple[str, tuple[float, float] | None]] = {
    name: (a.family, a.bounds) for name, a in _vocab.ACTIVATIONS.items()}


def activation_family(name: str | None) -> tuple[str | None, tuple[float, float] | None]:
    """``(family, bounds)`` of an activation name (torch or gradhealth spelling) or family name.

    ``"saturating"`` alone assumes tanh-like bounds (-1, 1); pass ``"sigmoid"`` for (0, 1).
    Unknown names and ``None`` give ``(None, None)``. The spellings and families are those of
    :mod:`gradhealth._vocab` (:func:`gradhealth._vocab.family_of`).
    """
    return _vocab.family_of(name)


def activation_stats(t: torch.Tensor, family: str | None = None, *, unit_dim: int = -1,
                     bounds: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
    """Mean, std, zero / dead / saturated fractions and non-finite count of one activation.

    Args:
        t: the activation (any shape; for a batch, examples along any dim but ``unit_dim``).
        family: activation name (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"``, ...) or family
            (``"relu"``, ``"saturating"``, ``"smooth"``, ``"linear"``); see the module doc.
            ``None``: only ``mean``, ``std``, ``zero_frac`` and ``nonfinite`` are measured.
        unit_dim: the dim that indexes units (features): -1 for ``(batch, ..., features)``,
            1 for convolution outputs ``(batch, channels, H, W)``. A unit is dead when it is 0
            for every entry along the other dims.
        bounds: override the output bounds used for saturation.

    Returns:
        dict with every key of :data:`STAT_KEYS`, each a 0-dim tensor on ``t.device``:
        ``mean``, ``std`` (float32, over the finite entries only; NaN when there are none),
        ``zero_frac`` (exact zeros / entries), ``dead_frac`` (dead units / units; NaN unless
        the family is ``"relu"``), ``saturated_frac`` (NaN unless bounds are known) and
        ``nonfinite`` (int64 count of NaN/Inf entries).

    No host synchronisation; about six elementwise passes over ``t``.
    """
    if not isinstance(t, torch.Tensor):
        raise ParameterError("t", "activation_stats", "a torch.Tensor", type(t).__name__,
                             "pass the activation tensor itself.")
    fam, fam_bounds = activation_family(family)
    if family is not None and fam is None:
        raise ParameterError("family", "activation_stats",
                             "an activation name or one of 'relu', 'saturating', 'smooth', 'linear'",
                             family, "pass e.g. family='tanh', or None to skip the family-specific "
                             "fractions.")
    if bounds is None:
        bounds = fam_bounds
    x = t.detach()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    dev = x.device
    nan = torch.full((), math.nan, dtype=torch.float32, device=dev)
    numel = x.numel()
    if numel == 0:
        return {"mean": nan, "std": nan, "zero_frac": nan, "dead_frac": nan,
                "saturated_frac": nan, "nonfinite": torch.zeros((), dtype=torch.int64, device=dev)}
    finite = torch.isfinite(x)
    n_fin = finite.sum()
    nonfinite = numel - n_fin
    xf = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=dev))
    n = n_fin.to(x.dtype)
    mean = xf.sum() / n  # NaN (0/0) when nothing is finite: said, not hidden
    centred = torch.where(finite, x - mean, torch.zeros((), dtype=x.dtype, device=dev))
    std = (centred.square().sum() / (n - 1).clamp_min(1)).sqrt()
    zero = x == 0
    zero_frac = zero.sum().to(torch.float32) / numel
    if fam == "relu":
        if x.ndim <= 1:
            dead_frac = zero_frac
        else:
            ud = check_int(unit_dim, "unit_dim", "activation_stats", min_value=-x.ndim,
                           max_value=x.ndim - 1)
            alive = torch.logical_not(zero).movedim(ud, 0).reshape(x.shape[ud], -1).any(dim=1)
            dead_frac = torch.logical_not(alive).to(torch.float32).mean()
    else:
        dead_frac = nan
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        margin = 0.01 * (hi - lo) / 2.0
        sat = ((x <= lo + margin) | (x >= hi - margin)) & finite
        saturated_frac = sat.sum().to(torch.float32) / numel
    else:
        saturated_frac = nan
    return {"mean": mean.to(torch.float32), "std": std.to(torch.float32), "zero_frac": zero_frac,
            "dead_frac": dead_frac, "saturated_frac": saturated_frac,
            "nonfinite": nonfinite.to(torch.int64)}
