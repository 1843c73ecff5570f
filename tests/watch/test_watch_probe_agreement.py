"""probe and watch on the same canonical broken models: the rank-1 remedies agree (issue 10).

Each model is probed on one batch, then watched for three SGD steps at lr = 0 on the same
batch (so both see the same weights). The rank-1 remedy of probe's verdict is compared with
the remedy watch attaches to its first event of the same kind: same gradhealth functions,
same key arguments (activation, gain, distribution, sigma_b2, chrono, value). Where the two
legitimately differ the test says why and checks the reason with an oracle:

* dead ReLU layers: probe's verdict is ``vanishing`` (the gradient dies with the units),
  watch reports ``dead_units`` (it measures the units, and the output gradients of a dead
  stack are 0, so there is no depth trend to fit); both prescribe
  ``he_(model, activation='relu')`` first. (Until issue 10 watch's remedy was ``he_(model)``,
  which leaves the output layer, with no activation after it, un-drawn: not the same init.)

The models are those of ``gallery/_cases.py`` (deep tanh chaotic, deep sigmoid, deep linear
1.5 I, tanh RNN of radius 3), the issue's 15-layer sigmoid MLP and 12-layer functional-ReLU CNN
at 3x He, functional sigmoid / tanh MLPs, an LSTM and a GRU over 400 steps, a vanilla RNN of
radius 0.5.
"""

from __future__ import annotations

import ast
import warnings

import pytest
import torch
import torch.nn.functional as F
from broken_models import FunctionalMLP, ReluCNN, dead_relu_mlp
from torch import nn

from gradhealth.gallery._cases import CASES, delay_task, digits
from gradhealth.gallery._cases import mlp as gallery_mlp
from gradhealth.probe import probe
from gradhealth.remedies import gaussian_
from gradhealth.watch import WatchWarning, watch

KEYS = ("activation", "gain", "distribution", "sigma_b2", "chrono", "value")


# --- models ----------------------------------------------------------------------------------------
class SeqClassifier(nn.Module):
    def __init__(self, cell, hidden=32, din=4, radius=None):
        super().__init__()
        self.rnn = cell(din, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)
        if radius is not None:
            with torch.no_grad():
                w = torch.randn(hidden, hidden)
                self.rnn.weight_hh_l0.copy_(w * radius / torch.linalg.eigvals(w).abs().max())

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _digits():
    x, y = digits()
    return x[:256], y[:256], F.cross_entropy


def _seq(steps):
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, steps, 4, generator=g), torch.randint(0, 2, (8,), generator=g), F.cross_entropy


def _gallery(slug):
    case = next(c for c in CASES if c.slug == slug)
    if case.task == "digits":
        return lambda: (case.build(0), *_digits())
    xs, ys = delay_task(32)
    return lambda: (case.build(0), xs, ys, lambda o, t: ((o - t)[:, 3:] ** 2).mean())


def _seeded(build, data):
    def make():
        torch.manual_seed(0)
        return (build(), *data())
    return make


def _tanh_chaotic_functional():
    m = FunctionalMLP(40, 64, torch.tanh)
    gaussian_(m, sigma_w2=4.0)
    return m


def _saturated_tanh():
    m = gallery_mlp(8, 64, nn.Tanh)
    gaussian_(m, sigma_w2=25.0)
    return m


def _cnn_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g), F.cross_entropy


# name -> (builder of (model, x, y, loss_fn), the kind watch reports for probe's verdict or None)
MODELS = {
    "tanh_chaotic": (_gallery("tanh_chaotic"), None),
    "sigmoid_default": (_gallery("sigmoid_default"), None),
    "linear_1p5": (_gallery("linear_1p5"), None),
    "rnn_radius3": (_gallery("rnn_radius3"), None),
    "sigmoid15": (_seeded(lambda: gallery_mlp(15, 64, nn.Sigmoid), _digits), None),
    "functional_relu_cnn_3x_he": (_seeded(ReluCNN, _cnn_data), None),
    "functional_sigmoid10": (_seeded(lambda: FunctionalMLP(10, 64, torch.sigmoid), _digits), None),
    "functional_tanh_chaotic": (_seeded(_tanh_chaotic_functional, _digits), None),
    "gru400": (_seeded(lambda: SeqClassifier(nn.GRU), lambda: _seq(400)), None),
    "rnn_radius_half": (_seeded(lambda: SeqClassifier(nn.RNN, radius=0.5), lambda: _seq(100)), None),
    "saturated_tanh": (_seeded(_saturated_tanh, _digits), None),
    "dead_relu": (_seeded(dead_relu_mlp, _digits), "dead_units"),
}


# --- running both --------------------------------------------------------------------------------
def _calls(code: str) -> list[tuple[str, dict]]:
    """``[(function, {key argument: literal})]`` of a remedy's statements (``;``-separated)."""
    out = []
    for stmt in code.split(";"):
        node = ast.parse(stmt.strip(), mode="eval").body
        assert isinstance(node, ast.Call), code
        fn = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg in KEYS}
        args = [ast.literal_eval(a) for a in node.args[1:]]
        out.append((fn, {**kw, **({"args": args} if args else {})}))
    return out


def _probe_and_watch(model, x, y, loss_fn):
    rx = probe(model, x, y, loss_fn=loss_fn, jacobian=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with watch(model, opt) as w:
            for _ in range(3):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
    return rx, [e for e in w.events if e.kind != "internal"]


@pytest.mark.parametrize("name", list(MODELS))
def test_probe_and_watch_prescribe_the_same_rank1_remedy(name):
    build, watch_kind = MODELS[name]
    model, x, y, loss_fn = build()
    rx, events = _probe_and_watch(model, x, y, loss_fn)
    assert rx.verdict in ("vanishing", "exploding", "saturated"), (name, rx.verdict)
    kind = watch_kind or rx.verdict
    ev = next((e for e in events if e.kind == kind), None)
    assert ev is not None, (name, [(e.kind, e.layer) for e in events])
    want, got = _calls(rx.prescriptions[0].code), _calls(ev.remedy)
    assert got == want, (name, rx.prescriptions[0].code, ev.remedy)


def test_lstm_vanishing_through_time_gets_the_forget_gate_from_both():
    """An LSTM over 400 steps: probe prescribes forget_gate_bias_(chrono=400); watch must not
    fall back to the plain-RNN remedies (critical_ orthogonal, and "switch to an LSTM")."""
    torch.manual_seed(0)
    model, x, y, loss_fn = SeqClassifier(nn.LSTM), *_seq(400)
    rx, events = _probe_and_watch(model, x, y, loss_fn)
    assert rx.verdict == "vanishing"
    ev = next(e for e in events if e.kind == "vanishing")
    assert _calls(rx.prescriptions[0].code) == [("forget_gate_bias_", {"chrono": 400})]
    assert _calls(ev.remedy) == _calls(rx.prescriptions[0].code), ev.remedy
