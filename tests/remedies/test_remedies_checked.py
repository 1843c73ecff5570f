"""Remedies are checked, not just ranked (issue 10): for each canonical broken model the first
prescription ``gradhealth cure`` would apply is applied to a copy, and two independent oracles
judge it: a fresh probe of the copy says healthy, and the same short training run (same seed,
same batches) reaches a clearly lower loss than the untreated model. Models that are healthy
(a BatchNorm CNN at the same bad scale, a post-LN Transformer) get no model-changing remedy and
train as they are. No prescription offered may be one that cannot help the observed case.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from broken_models import ReluCNN, dead_relu_mlp
from torch import nn

from gradhealth.gallery._cases import digits, mlp
from gradhealth.probe import probe
from gradhealth.remedies.prescribe import applies_to_model, apply_prescription


class PostLN(nn.Module):
    """A post-LN Transformer encoder over the 8 rows of a digit."""

    def __init__(self, depth=6, d=32):
        super().__init__()
        self.inp = nn.Linear(8, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=False)
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.enc(self.inp(x.view(-1, 8, 8))).mean(1))


class Recall(nn.Module):
    """Reads a gated RNN's last state: the task needs the first input, T steps back."""

    def __init__(self, cell, hidden=32):
        super().__init__()
        self.rnn = cell(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _recall_task(n=512, steps=100, seed=0):
    """The label is the sign of the first input; the rest is small noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 1, generator=g) * 0.1
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 0, 0] = 2.0 * y.float() - 1.0
    return x, y


def _digits():
    return digits()


# name -> (model builder, data, training steps, learning rate, expected verdict, first remedy function)
CASES = {
    "sigmoid15_mlp": (lambda: mlp(15, 64, nn.Sigmoid), _digits, 150, 1e-3, "vanishing", "replace_activation_"),
    "functional_relu_cnn_3x_he": (ReluCNN, _digits, 100, 1e-3, "exploding", "he_"),
    "dead_relu_mlp": (dead_relu_mlp, _digits, 150, 1e-3, "vanishing", "he_"),
    "lstm_100_steps": (lambda: Recall(nn.LSTM), _recall_task, 150, 1e-2, "vanishing", "forget_gate_bias_"),
    "gru_100_steps": (lambda: Recall(nn.GRU), _recall_task, 120, 1e-2, "vanishing", "forget_gate_bias_"),
    "batchnorm_cnn_3x_he": (lambda: ReluCNN(bn=True), _digits, 100, 1e-3, "healthy", None),
    "post_ln_transformer": (PostLN, _digits, 100, 1e-3, "healthy", None),
}


# case -> the start of its row in docs/cure.md's "Remedies checked" table (whose losses must be
# the ones measured here)
DOC_ROWS = {"sigmoid15_mlp": "15-layer sigmoid MLP", "functional_relu_cnn_3x_he": "12-layer CNN",
            "dead_relu_mlp": "6-layer ReLU MLP", "lstm_100_steps": "LSTM, recall",
            "gru_100_steps": "GRU, the same task", "batchnorm_cnn_3x_he": "the CNN with BatchNorm",
            "post_ln_transformer": "6-layer post-LN Transformer"}


def _doc_losses(name: str) -> list[float]:
    """The loss cells (untreated, cured) of the case's docs/cure.md row, as numbers ('-' left out)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "cure.md").read_text(encoding="utf-8")
    row = next(ln for ln in text.splitlines() if ln.startswith("| " + DOC_ROWS[name]))
    return [float(c) for c in (c.strip() for c in row.strip("|").split("|")[-2:]) if c != "-"]


def _train(model, x, y, steps, lr, seed=0) -> float:
    """Adam on minibatches of 64 drawn with a fixed seed; the full-data loss at the end."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        v = float(F.cross_entropy(model(x), y))
    return v if math.isfinite(v) else math.inf


def _function(code: str) -> str:
    return code.split("(")[0].rsplit(".", 1)[-1]


@pytest.mark.parametrize("name", list(CASES))
def test_the_first_applied_remedy_cures_the_probe_and_the_training(name):
    build, data, steps, lr, verdict, remedy = CASES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = data()
        torch.manual_seed(0)
        model = build()
        xb, yb = x[:64], y[:64]
        before = probe(model, xb, target=yb, loss_fn=F.cross_entropy, seed=0, jacobian=False)
        assert before.verdict == verdict, (name, before.verdict, before.summary)
        codes = [p.code for p in before.prescriptions]
        if "lstm" in name or "gru" in name:   # never offered: "switch to a gated cell" to a gated cell
            assert not any("-> nn.LSTM" in c or "-> nn.GRU" in c for c in codes), codes
        chosen = [p for p in before.prescriptions if applies_to_model(p)][:1]
        if remedy is None:
            assert chosen == [], codes   # healthy: nothing to change
            loss = _train(model, x, y, steps, lr)
            assert loss < 0.8 * math.log(10), (name, loss)   # and it trains as it is
            assert math.isclose(_doc_losses(name)[0], loss, rel_tol=0.03), (name, loss)
            return
        assert chosen and _function(chosen[0].code) == remedy, codes
        cured = copy.deepcopy(model)
        torch.manual_seed(0)
        apply_prescription(chosen[0], cured, xb)
        after = probe(cured, xb, target=yb, loss_fn=F.cross_entropy, seed=0, jacobian=False)
        assert after.healthy, (name, chosen[0].code, after.verdict, after.summary)
        broken_loss = _train(copy.deepcopy(model), x, y, steps, lr)
        cured_loss = _train(cured, x, y, steps, lr)
        assert cured_loss < 0.5 * broken_loss, (name, chosen[0].code, broken_loss, cured_loss)
        # the docs quote what is measured here (3%; a cured loss near 0 only to within 10x: the
        # last steps' float32 sums differ between AVX2 and AVX-512 kernels, 0.0015 there and
        # 0.013 here for the LSTM recall, both a cure of a loss of 0.7)
        doc_b, doc_c = _doc_losses(name)
        assert math.isclose(doc_b, broken_loss, rel_tol=0.03), (name, doc_b, broken_loss)
        assert cured_loss / 10 < doc_c < 10 * cured_loss, (name, doc_c, cured_loss)
    finally:
        torch.set_num_threads(threads)

