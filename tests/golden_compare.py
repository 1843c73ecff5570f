"""How the golden characterization files are compared with a fresh run."""

from __future__ import annotations

import math


def same(a, b) -> bool:
    """Equal, except that floats agree within a relative 1e-4: the last of the 6 digits the
    golden files keep moves with the machine's BLAS kernels (AVX2 and AVX-512 sums round
    differently: 0.746681 here, 0.74668 there); a change of behaviour does not hide in it."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)
    if isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
