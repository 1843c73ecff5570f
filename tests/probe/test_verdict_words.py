"""Every word the probe says is right (issue 10): a head with gain ~1 is not "exploding", and
the verdict, its headline and the prescription quote one measured number.

Oracles: the backward gain of the head recomputed by autograd (a Gaussian cotangent at the
output, ``||J^T w|| / ||w||`` at the head's output), and the trend factor recomputed from the
per-layer gains with a plain least-squares-free pairwise-slope loop.
"""

import math
import re
import statistics

import pytest
import torch
from probenets import deep_linear, mlp
from torch import nn

from gradhealth.probe import probe


def _cnn(n=16, gain=1.5, seed=0):
    """A ReLU CNN whose convs are He init times ``gain`` (explodes over depth for gain 1.5),
    then global average pooling and a default-initialised linear head."""
    torch.manual_seed(seed)
    layers, c = [], 3
    for _ in range(n):
        conv = nn.Conv2d(c, 16, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        with torch.no_grad():
            conv.weight.mul_(gain)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
        c = 16
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers)


def _head_gain(net, x):
    """||J^T w|| / ||w|| at the head's output, by autograd: the head is the output, so 1."""
    out = net(x)
    w = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, out, w)
    return float(g.norm() / w.norm())


@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_cnn_head_with_gain_one_is_not_exploding(gain):
    net = _cnn(gain=gain)
    x = torch.randn(4, 3, 32, 32)
    r = probe(net, x, jacobian=False)
    head = r.layers[-1]
    assert head.type == "Linear"
    assert math.isclose(head.gain, _head_gain(net, x), rel_tol=1e-6)
    assert head.verdict == "healthy", [(lr.name, lr.gain, lr.verdict) for lr in r.layers]
    if gain == 1.5:  # the convs do explode: the verdict stays, on them
        assert r.verdict == "exploding" and r.layers[0].verdict == "exploding"


def test_two_layer_head_after_pooling_is_not_exploding():
    torch.manual_seed(0)
    body = list(_cnn(gain=1.5))[:-1]
    hidden = nn.Linear(16, 16)
    nn.init.kaiming_normal_(hidden.weight, nonlinearity="relu")
    net = nn.Sequential(*body, hidden, nn.ReLU(), nn.Linear(16, 10))
    r = probe(net, torch.randn(4, 3, 32, 32), jacobian=False)
    assert "exploding" not in [lr.verdict for lr in r.layers[-2:]], [(lr.name, lr.gain, lr.verdict) for lr in r.layers]
    assert r.verdict == "exploding"


# --- one number per quantity ------------------------------------------------------------------
_NUM = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def _over(text, what="layers"):
    m = re.search(r"x" + _NUM + r" over (\d+) " + what, text)
    assert m, text
    return float(m.group(1)), int(m.group(2))


def _trend_total(gains):
    """Pairwise-slope median of log gain against position, compounded over the span."""
    pts = [(i, math.log(g)) for i, g in enumerate(gains) if g and g > 0 and math.isfinite(g)]
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for k, a in enumerate(pts) for b in pts[k + 1:]]
    return math.exp(-statistics.median(slopes) * (pts[-1][0] - pts[0][0]))


NETS = {
    "tanh sigma_w2=4, 50 layers": lambda: mlp(50, act=nn.Tanh, sigma_w2=4.0),
    "sigmoid, 50 layers": lambda: mlp(50, act=nn.Sigmoid),
    "linear 1.5 I, 50 layers": lambda: deep_linear(50, 1.5),
    "relu CNN x1.5": lambda: _cnn(gain=1.5),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_headline_and_rank1_prescription_quote_the_same_factor(name):
    torch.manual_seed(0)
    net = NETS[name]()
    x = torch.randn(4, 3, 32, 32) if "CNN" in name else torch.randn(64, 32 if "linear" in name else 16)
    r = probe(net, x, jacobian=False)
    assert r.verdict in ("exploding", "vanishing")
    head, depth = _over(r.summary)
    top = r.prescriptions[0]
    said, said_depth = _over(top.reason)
    assert (said, said_depth) == (head, depth), (r.summary, top.reason)
    # and it is the measured trend of the gains, computed independently
    assert math.isclose(head, _trend_total([lr.gain for lr in r.layers]), rel_tol=5e-3)
    assert r.findings[0].evidence["trend_total"] == pytest.approx(head, rel=5e-3)


@pytest.mark.parametrize("name", ["tanh sigma_w2=4, 50 layers", "linear 1.5 I, 50 layers", "relu CNN x1.5"])
def test_gsc_cited_for_an_exploding_net_is_above_one(name):
    torch.manual_seed(0)
    net = NETS[name]()
    x = torch.randn(4, 3, 32, 32) if "CNN" in name else torch.randn(64, 32 if "linear" in name else 16)
    r = probe(net, x, jacobian=False)
    assert r.verdict == "exploding"
    cited = [float(m) for p in r.prescriptions if p.kind == "exploding"
             for m in re.findall(r"gradient scale coefficient " + _NUM, p.reason)]
    assert all(c > 1 for c in cited), cited
    if name.startswith("tanh"):  # a chaotic tanh net: the GSC is large and is cited
        assert cited and min(cited) > 100
