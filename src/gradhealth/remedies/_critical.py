"""Critical weight variances for the initialisers and the prescriptions (cached)."""

from __future__ import annotations

import functools
import math

__all__ = ["critical_sigma_w2_or_none", "preload"]

# Closed-form critical points used only when gradhealth.theory.criticality is unavailable.
# chi_1 = sigma_w2 * E[phi'(h)^2]: for relu it is sigma_w2 / 2 and for linear sigma_w2, at any
# sigma_b2; for odd activations at sigma_b2 = 0 the fixed point is q* = 0, so chi_1 =
# sigma_w2 * phi'(0)^2 (tanh: 1, erf: 4 / pi).
_FALLBACK_CRITICAL_ANY_B = {"relu": 2.0, "linear": 1.0}
_FALLBACK_CRITICAL_B0 = {"tanh": 1.0, "erf": math.pi / 4}


def critical_sigma_w2_or_none(activation: str | None, sigma_b2: float = 0.0) -> float | None:
    """The critical weight variance for ``activation`` at ``sigma_b2``, or ``None`` if unknown.

    Uses :func:`gradhealth.theory.criticality.critical_sigma_w2`; without it, only the
    closed-form points are known (relu: 2 and linear: 1 at any sigma_b2; tanh: 1 and erf:
    pi/4 at sigma_b2 = 0). Cached: the root-finding takes about a second per point.
    """
    if not activation:
        return None
    return _critical_cached(str(activation), float(sigma_b2))


def preload() -> None:
    """Import what :func:`critical_sigma_w2_or_none` computes with (the theory and SciPy's
    splines, about 1.5 s on a cold start), so that a caller inside a training loop (the first
    event of a watched run) pays only the arithmetic. Never raises: without them the
    closed-form points are used."""
    try:
        import scipy.interpolate  # noqa: F401  (theory._kernels imports it lazily, at first use)

        from ..theory import criticality  # noqa: F401
    except Exception:  # pragma: no cover - a broken SciPy: the fallback points still work
        pass


@functools.lru_cache(maxsize=256)
def _critical_cached(activation: str, sigma_b2: float) -> float | None:
    try:
        from ..theory.criticality import critical_sigma_w2
    except ImportError:
        critical_sigma_w2 = None
    if critical_sigma_w2 is not None:
        try:
            v = float(critical_sigma_w2(activation, sigma_b2))
        except Exception:  # no critical point for this activation / sigma_b2 (e.g. sigmoid)
            return None
        return v if math.isfinite(v) and v > 0 else None
    if activation in _FALLBACK_CRITICAL_ANY_B:
        return _FALLBACK_CRITICAL_ANY_B[activation]
    return _FALLBACK_CRITICAL_B0.get(activation) if sigma_b2 == 0 else None
