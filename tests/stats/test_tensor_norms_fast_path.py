"""tensor_norms' one-group fast path (strided tensors of one dtype and device) against an
independent oracle: each tensor's norm by torch.linalg.vector_norm in float64."""

from __future__ import annotations

import math

import pytest
import torch

from gradhealth.stats import tensor_norms


def _oracle(ts, p):
    return [float(torch.linalg.vector_norm(t.double(), p)) for t in ts]


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_one_group_matches_per_tensor_norms(p):
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=g) for n in (1, 7, 300, 33)] + [torch.randn(4, 5, generator=g).t()]
    out = tensor_norms(ts, p)
    assert out.dtype == torch.float32 and out.shape == (5,)
    assert out.tolist() == pytest.approx(_oracle(ts, p), rel=1e-6)


def test_one_group_float64_result_and_grad_free():
    x = torch.randn(10, requires_grad=True)
    ts = [x * 2, torch.randn(3)]
    out = tensor_norms(ts, dtype=torch.float64)
    assert out.dtype == torch.float64 and not out.requires_grad
    assert out.tolist() == pytest.approx(_oracle([t.detach() for t in ts], 2.0), rel=1e-12)


def test_mixed_dtypes_still_grouped():
    ts = [torch.randn(5), torch.randn(6, dtype=torch.float64), None, torch.randn(4).half()]
    out = tensor_norms(ts)
    want = _oracle([ts[0], ts[1]], 2.0) + [0.0] + _oracle([ts[3]], 2.0)
    assert out.tolist() == pytest.approx(want, rel=1e-3)
