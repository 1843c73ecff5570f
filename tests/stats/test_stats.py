"""gradhealth.stats: per-tensor reductions against torch, and no host synchronisation.

"No host sync" is tested on the ``meta`` device: a meta tensor has a shape but no data, so
any ``.item()``, ``.tolist()``, ``bool(tensor)`` or data-dependent branch raises there. A
function that runs on meta tensors cannot be reading values back to the host.
"""

import math

import pytest
import torch

from gradhealth.errors import ParameterError
from gradhealth.stats import (
    STAT_KEYS,
    activation_family,
    activation_stats,
    grad_norms,
    nonfinite_counts,
    segment_norms,
    tensor_norms,
)


def test_tensor_norms_match_torch_per_tensor():
    ts = [torch.randn(3, 4), torch.randn(7, dtype=torch.float64), torch.randn(2, 2, 2)]
    for p in (2.0, 1.0, math.inf):
        got = tensor_norms(ts, p)
        want = torch.tensor([float(torch.linalg.vector_norm(t, p)) for t in ts])
        assert got.dtype == torch.float32 and got.shape == (3,)
        torch.testing.assert_close(got, want.float())


def test_tensor_norms_none_int_empty_and_nonfinite():
    got = tensor_norms([None, torch.tensor([3, 4]), torch.zeros(0), torch.tensor([1.0, math.nan]),
                        torch.tensor([math.inf])])
    assert got[0] == 0 and got[1] == 5 and got[2] == 0
    assert math.isnan(got[3]) and math.isinf(got[4])
    assert tensor_norms([]).shape == (0,)


def test_half_precision_norm_does_not_overflow():
    t = torch.full((4,), 60000.0, dtype=torch.float16)  # ||t|| = 120000 > float16 max 65504
    assert float(tensor_norms([t])[0]) == pytest.approx(120000.0)


def test_grad_norms_reads_dot_grad():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])
    torch.testing.assert_close(grad_norms([a, b]), torch.tensor([5.0, 0.0]))


def test_nonfinite_counts_are_exact():
    ts = [torch.tensor([1.0, math.nan, math.inf, -math.inf]), None, torch.arange(4),
          torch.randn(10)]
    assert nonfinite_counts(ts).tolist() == [3, 0, 0, 0]
    assert nonfinite_counts(ts).dtype == torch.int64


def test_segment_norms_combine_squares():
    norms = torch.tensor([3.0, 4.0, 5.0, 12.0])
    torch.testing.assert_close(segment_norms(norms, [0, 0, 1, 1]), torch.tensor([5.0, 13.0]))
    torch.testing.assert_close(segment_norms(norms, torch.tensor([1, 1, 0, 0]), 3),
                               torch.tensor([13.0, 5.0, 0.0]))
    with pytest.raises(ParameterError, match="num_segments"):
        segment_norms(norms, torch.tensor([0, 0, 1, 1]))


def test_activation_stats_relu_dead_units_and_zero_fraction():
    x = torch.relu(torch.randn(256, 8))
    x[:, 3] = 0.0  # one dead unit: zero for every example
    s = activation_stats(x, "relu")
    assert set(s) == set(STAT_KEYS)
    assert float(s["dead_frac"]) == pytest.approx(1 / 8)
    assert float(s["zero_frac"]) == pytest.approx(float((x == 0).float().mean()))
    assert math.isnan(float(s["saturated_frac"]))
    torch.testing.assert_close(s["mean"], x.mean())
    torch.testing.assert_close(s["std"], x.std())


def test_activation_stats_conv_units_are_channels():
    x = torch.relu(torch.randn(4, 6, 5, 5))
    x[:, 2] = 0.0
    assert float(activation_stats(x, "relu", unit_dim=1)["dead_frac"]) == pytest.approx(1 / 6)


@pytest.mark.parametrize("name,fn,margin_test", [
    ("tanh", torch.tanh, lambda y: y.abs() >= 0.99),
    ("sigmoid", torch.sigmoid, lambda y: (y <= 0.005) | (y >= 0.995)),
])
def test_activation_stats_saturation(name, fn, margin_test):
    y = fn(4 * torch.randn(1000))
    s = activation_stats(y, name)
    assert float(s["saturated_frac"]) == pytest.approx(float(margin_test(y).float().mean()))
    assert math.isnan(float(s["dead_frac"]))


def test_activation_stats_nonfinite_and_empty():
    s = activation_stats(torch.tensor([1.0, 3.0, math.nan, math.inf]), "gelu")
    assert int(s["nonfinite"]) == 2
    assert float(s["mean"]) == pytest.approx(2.0)  # over the finite entries
    assert math.isnan(float(s["saturated_frac"])) and math.isnan(float(s["dead_frac"]))
    e = activation_stats(torch.zeros(0))
    assert math.isnan(float(e["mean"])) and int(e["nonfinite"]) == 0


def test_activation_family_names_and_errors():
    assert activation_family("SiLU") == ("smooth", None)
    assert activation_family("hardtanh") == ("saturating", (-1.0, 1.0))
    assert activation_family("sigmoid")[1] == (0.0, 1.0)
    assert activation_family("nope") == (None, None)
    with pytest.raises(ParameterError, match="'family'"):
        activation_stats(torch.ones(3), "nope")
    with pytest.raises(ParameterError, match="'t'"):
        activation_stats([1.0, 2.0], "relu")


def test_no_host_sync_meta_device():
    """Every function runs on data-less meta tensors: nothing is read back to the host."""
    ts = [torch.empty(3, 4, device="meta"), torch.empty(5, device="meta", dtype=torch.float16), None]
    assert tensor_norms(ts).device.type == "meta"
    assert nonfinite_counts(ts).device.type == "meta"
    seg = segment_norms(torch.empty(3, device="meta"), torch.zeros(3, dtype=torch.long, device="meta"), 2)
    assert seg.shape == (2,) and seg.device.type == "meta"
    for fam in ("relu", "tanh", "sigmoid", "gelu", None):
        s = activation_stats(torch.empty(8, 16, device="meta"), fam)
        assert all(v.device.type == "meta" and v.ndim == 0 for v in s.values())
