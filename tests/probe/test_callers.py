"""Ways real code calls the probe: from eval code, on compiled modules, with attention masks."""

import pytest
import torch
from torch import nn

from gradhealth.errors import NonFiniteError
from gradhealth.probe import probe


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_probe_inside_no_grad_or_inference_mode_equals_a_plain_probe(ctx):
    m, x = mlp(), torch.randn(4, 8)
    ref = probe(m, x, jacobian=False)
    with ctx():
        xi = torch.randn(4, 8) if ctx is torch.inference_mode else x
        if ctx is torch.inference_mode:
            xi.copy_(x)
        got = probe(m, xi, jacobian=False)
    assert [lr.gain for lr in got.layers] == pytest.approx([lr.gain for lr in ref.layers])
    assert got.verdict == ref.verdict


class _LM(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x, mask):
        return self.head(self.enc(x, mask=mask))


def test_additive_causal_mask_with_minus_inf_is_accepted_nan_is_not():
    torch.manual_seed(0)
    m, x = _LM(), torch.randn(3, 6, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    assert torch.isneginf(mask).any()
    r = probe(m, (x, mask), jacobian=False)
    assert any("-inf" in n for n in r.notes)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"input\[0\].*1 NaN/\+Inf"):
        probe(m, (bad, mask), jacobian=False)


def test_compiled_module_is_probed_through_its_original():
    m, x = mlp(), torch.randn(4, 8)
    ref = probe(m, x, jacobian=False)
    got = probe(torch.compile(m), x, jacobian=False)
    assert [lr.gain for lr in got.layers] == pytest.approx([lr.gain for lr in ref.layers])
    assert any("torch.compile" in n for n in got.notes)


class _Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(8, 2, batch_first=True)
        self.l = nn.Linear(8, 3)

    def forward(self, x, m):
        return self.l(self.a(x, x, x, attn_mask=m)[0])


def test_jacobian_falls_back_to_the_whole_batch_when_a_non_batch_input_breaks_slicing():
    # batch 12 and a (12, 12) attention mask: slicing the first 8 "examples" of the mask breaks
    torch.manual_seed(0)
    x = torch.randn(12, 12, 8)
    mask = torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)
    r = probe(_Masked(), (x, mask), jacobian_batch=8)
    assert r.jacobian is not None and r.jacobian.top[0] > 0
    assert any("whole batch" in n for n in r.notes)
