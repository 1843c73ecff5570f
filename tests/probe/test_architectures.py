"""Every architecture family the probe promises: CNN, RNN/LSTM/GRU (time is depth), RNN cells
in a loop, Transformers (nn.TransformerEncoder and a hand-written block), dict/tuple
inputs and outputs, frozen/unused/shared parameters, BatchNorm/LayerNorm/Dropout."""

import json

import pytest
import torch
from probenets import HandBlock, TinyLM
from torch import nn

from gradhealth.probe import probe


def test_lstm_and_gru_stacked_bidirectional_report_every_layer_and_direction():
    class Net(nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.rnn = cls(6, 16, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    for cls in (nn.LSTM, nn.GRU):
        r = probe(Net(cls), torch.randn(4, 20, 6), jacobian=False)
        labels = [ts.layer for ts in r.recurrent]
        assert labels == ["rnn (layer 0)", "rnn (layer 0, reverse)", "rnn (layer 1)", "rnn (layer 1, reverse)"]
        assert all(len(ts.gains) == 20 and all(g is not None for g in ts.gains) for ts in r.recurrent)
        # the loss reads the last step only: the reverse direction's last processed step is 0,
        # and its gradient is largest there
        rev = r.recurrent[3]
        assert max(range(20), key=lambda t: rev.gains[t]) in (0, 19)
        assert not [n for n in r.notes if "not measured" in n]


def test_rnn_cell_in_a_python_loop_is_analysed_per_call():
    class Loop(nn.Module):
        def __init__(self, rho):
            super().__init__()
            self.cell = nn.RNNCell(3, 24)
            self.head = nn.Linear(24, 2)
            with torch.no_grad():
                w = torch.randn(24, 24)
                self.cell.weight_hh.copy_(w * rho / torch.linalg.eigvals(w).abs().max())

        def forward(self, x):
            h = torch.zeros(x.shape[0], 24)
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
            return self.head(h)

    r = probe(Loop(3.0), torch.randn(8, 60, 3), jacobian=False)
    (ts,) = r.recurrent
    assert ts.kind == "calls" and len(ts.gains) == 60 and ts.layer == "cell"
    assert r.verdict == "exploding" and r.worst_layer == "cell" and ts.worst_step == 0
    assert r.layer("cell").calls == 60
    assert r.findings[0].evidence["is_recurrent"] is True


def test_transformer_encoder_folds_out_proj_into_attention():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=False)
    r = probe(enc, torch.randn(4, 6, 32))
    att = r.layer("layers.0.self_attn")
    assert "out_proj" in att.note and att.n_params == 4 * 32 * 32 + 4 * 32
    assert r.layer("layers.0.linear1").activation == "relu"
    assert [lr.name for lr in r.layers][:3] == ["layers.0.self_attn", "layers.0.norm1", "layers.0.linear1"]
    assert r.jacobian is not None and r.jacobian.wrt == "input[0]"


def test_hand_written_transformer_block():
    model = nn.Sequential(HandBlock(32), HandBlock(32))
    r = probe(model, torch.randn(4, 8, 32))
    assert r.verdict == "healthy", r.summary
    assert r.residual.compositional_depth == 4
    assert r.residual.blocks[0].branch_layers == ("0.ln1", "0.qkv", "0.proj")
    assert r.layer("0.ff1").activation == "gelu"   # functional F.gelu, seen by the spy


def test_dict_inputs_integer_ids_and_dict_outputs():
    model = TinyLM()
    ids = torch.randint(0, 50, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    r = probe(model, {"input_ids": ids, "attention_mask": mask},
              loss_fn=lambda out, tgt: out["logits"].logsumexp(-1).mean())
    assert r.loss["kind"] == "user"
    assert r.layers[0].name == "emb"
    assert r.jacobian is not None and r.jacobian.wrt.startswith("output of emb")
    json.dumps(r.to_dict())


def test_tuple_outputs_and_ce_loss():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.cls = nn.Linear(16, 5)
            self.aux = nn.Linear(16, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.cls(h), self.aux(h)

    r = probe(Two(), torch.randn(12, 8), loss_fn="ce")
    assert r.loss["kind"] == "ce" and r.verdict == "healthy"
    assert r.layer("aux").gain is not None  # the aux output is part of the model output


def test_frozen_unused_and_shared_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(6, 6)
            self.shared = nn.Linear(6, 6)
            self.unused = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)
            for p in self.frozen.parameters():
                p.requires_grad_(False)

        def forward(self, x):
            return self.out(torch.tanh(self.shared(torch.tanh(self.shared(self.frozen(x))))))

    r = probe(Net(), torch.randn(10, 6))
    fr = r.layer("frozen")
    assert fr.trainable == "frozen" and fr.grad_norm is None and "frozen" in fr.note
    assert fr.gain is not None  # the backward signal still reaches its output
    assert r.layer("shared").calls == 2
    assert any("unused" in n and "never ran" in n for n in r.notes)
    with pytest.raises(KeyError):
        r.layer("unused")


def test_frozen_embedding_with_integer_inputs_still_gets_a_backward_signal():
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 5, 3))
    model[0].weight.requires_grad_(False)
    r = probe(model, torch.randint(0, 20, (6, 5)))
    assert r.layer("0").gain is not None and r.layer("0").grad_norm is None
    assert not model[0].weight.requires_grad


def test_layer_filter_restricts_the_table():
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    r = probe(model, torch.randn(4, 8), layers=["1", "4*"])
    assert [lr.name for lr in r.layers] == ["1", "4"]
    assert r.settings["layers"] == ["1", "4*"]


def test_batchnorm_layernorm_dropout_mlp_in_eval_mode():
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))
    r = probe(model, torch.randn(16, 8), mode="eval")
    assert r.settings["mode"] == "eval" and r.verdict == "healthy"
    assert r.layer("1").activation == "relu" and r.layer("5").activation == "gelu"


def test_inplace_relu_after_a_layer_is_measured_before_the_relu():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
    b = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 8)
    ra, rb = probe(a, x), probe(b, x)
    for la, lb in zip(ra.layers, rb.layers):
        assert la.gain == pytest.approx(lb.gain, rel=1e-6)
        assert la.act_zero_frac == pytest.approx(lb.act_zero_frac)
        assert la.out_mean == pytest.approx(lb.out_mean, rel=1e-6)
