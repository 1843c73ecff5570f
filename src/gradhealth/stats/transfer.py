"""Moving measured tensors to the host: one device-to-host copy per device.

The reductions of :mod:`gradhealth.stats.tensors` and :mod:`gradhealth.stats.activations`
leave their results on the device. A caller that wants to look at many of them at once hands
them all to :func:`to_host`, which pays one synchronisation per device instead of one per
tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["to_host"]


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Each tensor flattened to float32 on the host, with one device-to-host copy per device.

    Args:
        tensors: dense tensors of any shapes, dtypes and devices (a 0-dim tensor gives one
            value; an empty tensor gives an empty array). They are detached, not modified.

    Returns:
        One 1-D ``np.float32`` array per tensor, in the order given (``[]`` for no tensors).
        The tensors of one device are flattened, converted to float32 there and concatenated,
        and the concatenation is copied to the host once; the arrays of one device are slices
        of that one host buffer (they share memory with each other, never with the inputs).
    """
    flat = [t.detach().reshape(-1).float() for t in tensors]
    if len(flat) == 1 and flat[0].device.type == "cpu":
        return [flat[0].numpy().copy()]   # (the usual logged step: one tensor, nothing to move)
    by_dev: dict[torch.device, list[int]] = {}
    for k, f in enumerate(flat):
        by_dev.setdefault(f.device, []).append(k)
    host: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(flat)
    for ks in by_dev.values():
        cat = torch.cat([flat[k] for k in ks]).cpu().numpy()
        o = 0
        for k in ks:
            n = flat[k].numel()
            host[k] = cat[o:o + n]
            o += n
    return host
