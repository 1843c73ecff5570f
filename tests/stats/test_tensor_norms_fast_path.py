"""tensor_norms' one-group fast path (strided tensors of one dtype and device) against an
independent oracle: each tensor's norm by torch.linalg.vector_norm in float64."""

from __future__ import annotations

import math
import warnings

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


def _sparse_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's notes on sparse invariants and CSR's beta state
        return _sparse_tensors()


def _sparse_tensors():
    d = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    # an uncoalesced COO tensor: index 0 twice, its value is the sum 3 + 4 (norm of the dense
    # tensor: 7, not 5)
    unc = torch.sparse_coo_tensor([[0, 0, 2]], [3.0, 4.0, 1.0], (4,))
    return [("coo-uncoalesced", unc, unc.to_dense()), ("csr", d.to_sparse_csr(), d),
            ("csc", d.to_sparse_csc(), d), ("bsr", d.to_sparse_bsr((2, 2)), d)]


@pytest.mark.parametrize("name,sparse,dense", _sparse_cases(), ids=[c[0] for c in _sparse_cases()])
def test_a_sparse_tensor_among_dense_ones_gets_its_dense_norm(name, sparse, dense):
    ts = [torch.randn(5), sparse, torch.randn(3)]
    out = tensor_norms(ts)
    assert out.tolist() == pytest.approx(_oracle([ts[0], dense, ts[2]], 2.0), rel=1e-6)


def test_bfloat16_among_float32_is_reduced_in_float32():
    # a fused norm of the bfloat16 tensor alone would round it to bfloat16 (8 bits of mantissa)
    g = torch.Generator().manual_seed(2)
    b = torch.randn(1000, generator=g).bfloat16()
    out = tensor_norms([torch.randn(7, generator=g), b])
    assert out[1].item() == pytest.approx(_oracle([b], 2.0)[0], rel=1e-6)


def test_tensors_that_require_grad_give_a_detached_result():
    x = torch.randn(10, requires_grad=True)
    out = tensor_norms([x, x * 3])
    assert not out.requires_grad and out.grad_fn is None
    assert out.tolist() == pytest.approx(_oracle([x.detach(), 3 * x.detach()], 2.0), rel=1e-6)


def test_a_nested_tensor_among_dense_ones_gets_the_norm_of_its_values():
    nt = torch.nested.nested_tensor([torch.ones(3), torch.full((2,), 2.0)], layout=torch.jagged)
    out = tensor_norms([torch.ones(2), nt])
    assert out.tolist() == pytest.approx([math.sqrt(2.0), math.sqrt(3.0 + 8.0)], rel=1e-6)
