"""Device-side reductions: pure functions of tensors, shared by the probe and the watcher.

Every reduction here takes tensors and returns tensors **on the device of its input**, and
never reads a value back to the host (no ``.item()``, ``.tolist()``, ``bool(tensor)`` or
data-dependent Python branching). A caller transfers the results once, when it wants to look:
:func:`to_host` is that transfer (one device-to-host copy per device).

=============================== ============================================================
function                        returns
=============================== ============================================================
:func:`tensor_norms`            1-D float32 tensor: the norm of each tensor (``None`` -> 0)
:func:`grad_norms`              same, for the ``.grad`` of parameters (or gradients given)
:func:`nonfinite_counts`        1-D int64 tensor: the number of NaN/Inf entries of each tensor
:func:`segment_norms`           per-group norms from per-tensor norms (layers from tensors)
:func:`activation_stats`        dict of 0-dim tensors: mean, std, zero / dead / saturated
                                fractions and non-finite count of one activation tensor
:func:`to_host`                 list of 1-D float32 NumPy arrays, one per tensor, read back
                                with one device-to-host copy per device
=============================== ============================================================
"""

from .activations import ACTIVATION_FAMILIES, STAT_KEYS, activation_family, activation_stats
from .tensors import grad_norms, nonfinite_counts, segment_norms, tensor_norms
from .transfer import to_host

__all__ = [
    "tensor_norms",
    "grad_norms",
    "nonfinite_counts",
    "segment_norms",
    "activation_stats",
    "activation_family",
    "ACTIVATION_FAMILIES",
    "STAT_KEYS",
    "to_host",
]
