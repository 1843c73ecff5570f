"""gradhealth.stats.to_host: many tensors read back to the host with one copy per device.

Oracle: each tensor read back on its own (``.cpu().numpy()`` per tensor, or hand-written values
where NumPy has no dtype, bfloat16), flattened and rounded to float32 by NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradhealth.stats
from gradhealth.stats import to_host
from gradhealth.stats.transfer import to_host as to_host_in_module


def _one_by_one(t: torch.Tensor) -> np.ndarray:
    """The independent reading: this tensor alone, converted by NumPy."""
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64).reshape(-1).astype(np.float32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_exported_from_stats():
    assert to_host is to_host_in_module
    assert "to_host" in gradhealth.stats.__all__


def test_empty_list():
    assert to_host([]) == []


def test_mixed_dtypes_and_shapes_equal_one_by_one_readings():
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(2, 3, generator=g),                                  # float32 matrix
        torch.tensor(3.25),                                              # 0-dim
        torch.randn(4, generator=g, dtype=torch.float64) * 1e3,          # float64: rounds to f32
        torch.tensor([1e-3, -2.0, 65504.0], dtype=torch.float16),
        torch.zeros(0),                                                  # empty
        torch.arange(-3, 3, dtype=torch.int64).reshape(2, 3),
        torch.tensor([True, False, True]),
        torch.tensor([0, 255], dtype=torch.uint8),
        torch.zeros(3, 0, 2),                                            # empty, 3-D
        torch.tensor([math.nan, math.inf, -math.inf, 0.0]),
        torch.randn(3, 4, generator=g).t(),                              # not contiguous
    ]
    got = to_host(tensors)
    assert len(got) == len(tensors)
    for k, (t, h) in enumerate(zip(tensors, got)):
        assert isinstance(h, np.ndarray) and h.dtype == np.float32 and h.ndim == 1, k
        assert _same(h, _one_by_one(t)), k
    assert got[1].tolist() == [3.25] and got[4].size == 0 and got[8].size == 0


def test_bfloat16_values():
    # values bfloat16 holds exactly; NumPy has no bfloat16, so the oracle is written out
    want = [1.5, -256.0, 2.0 ** -10, 3.0e38, math.inf, math.nan]
    t = torch.tensor(want, dtype=torch.bfloat16)
    exact = [float(v) for v in t.tolist()]  # what bfloat16 stored (3e38 is rounded)
    assert exact[:3] == want[:3]
    (h,) = to_host([t])
    assert h.dtype == np.float32
    assert _same(h, np.array(exact, dtype=np.float32))
    # and together with float32 tensors it still lands in its own slot
    a, b, c = to_host([torch.ones(2), t.reshape(2, 3), torch.tensor(-1.0, dtype=torch.bfloat16)])
    assert a.tolist() == [1.0, 1.0] and _same(b, h) and c.tolist() == [-1.0]


def test_inputs_detached_and_not_aliased():
    w = torch.randn(5, requires_grad=True)
    x = torch.arange(6.0)
    hw, hx = to_host([w * 2, x])
    assert _same(hw, _one_by_one(w * 2))
    hx[:] = -1.0  # writing the host copy leaves the tensor alone
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # one tensor alone (the shortcut of a logged step: nothing to concatenate)
    (h1,) = to_host([x])
    h1[:] = -1.0
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    (hw1,) = to_host([w])
    assert _same(hw1, _one_by_one(w)) and hw1.dtype == np.float32


def _count_cpu_calls(monkeypatch) -> list[torch.device]:
    seen: list[torch.device] = []
    real = torch.Tensor.cpu

    def cpu(self, *args, **kwargs):
        seen.append(self.device)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    return seen


def test_one_copy_per_device(monkeypatch):
    tensors = [torch.randn(3), torch.tensor(1.0), torch.ones(2, 2, dtype=torch.float64), torch.zeros(0)]
    want = [_one_by_one(t) for t in tensors]
    seen = _count_cpu_calls(monkeypatch)
    got = to_host(tensors)
    assert seen == [torch.device("cpu")]
    assert all(_same(g, w) for g, w in zip(got, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_keep_their_order_with_one_copy_each(monkeypatch):
    tensors = [torch.randn(3, device="cuda"), torch.arange(4.0), torch.tensor(2.0, device="cuda"),
               torch.ones(2, dtype=torch.bfloat16, device="cuda"), torch.tensor([7], dtype=torch.int32)]
    want = [_one_by_one(t.float()) for t in tensors]
    seen = _count_cpu_calls(monkeypatch)
    got = to_host(tensors)
    assert sorted(str(d) for d in seen) == ["cpu", "cuda:0"]
    assert all(_same(g, w) for g, w in zip(got, want))
