"""Small models for the probe tests: textbook healthy and textbook broken ones."""

import math

import torch
from torch import nn


def mlp(depth, width=64, act=nn.Tanh, *, sigma_w2=None, sigma_b2=0.0, din=16, dout=4, init=None):
    """``depth`` Linear layers; hidden weights N(0, sigma_w2 / fan_in) when sigma_w2 is given."""
    layers, fan_in = [], din
    for _ in range(depth - 1):
        lin = nn.Linear(fan_in, width)
        with torch.no_grad():
            if sigma_w2 is not None:
                lin.weight.normal_(0.0, math.sqrt(sigma_w2 / fan_in))
                lin.bias.normal_(0.0, math.sqrt(sigma_b2)) if sigma_b2 > 0 else lin.bias.zero_()
            elif init == "he":
                nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
                lin.bias.zero_()
        layers += [lin, act()]
        fan_in = width
    layers.append(nn.Linear(fan_in, dout))
    return nn.Sequential(*layers)


def deep_linear(depth, scale, width=32):
    net = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(scale * torch.eye(width))
    return net


class Block(nn.Module):
    """Pre-LayerNorm residual ReLU block with He init."""

    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        for lin in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.ln(x))))


class ResMLP(nn.Module):
    def __init__(self, d=32, n=12, din=16, dout=4):
        super().__init__()
        self.inp = nn.Linear(din, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(n)])
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, dout)

    def forward(self, x):
        return self.out(self.norm(self.blocks(self.inp(x))))


class RNNNet(nn.Module):
    """Vanilla tanh RNN whose recurrent matrix has spectral radius ``rho``; loss on the last step."""

    def __init__(self, rho, hidden=32, din=4):
        super().__init__()
        self.rnn = nn.RNN(din, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():
            w = torch.randn(hidden, hidden)
            w *= rho / torch.linalg.eigvals(w).abs().max()
            self.rnn.weight_hh_l0.copy_(w)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class HandBlock(nn.Module):
    """A transformer block written by hand: attention from Linear layers, residuals, LayerNorm."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))


class TinyLM(nn.Module):
    """HF-style: called with keyword tensors (integer ids), returns a dict."""

    def __init__(self, vocab=50, d=32, n=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([HandBlock(d) for _ in range(n)])
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        x = self.emb(input_ids)
        for blk in self.blocks:
            x = blk(x)
        if attention_mask is not None:
            x = x * attention_mask.unsqueeze(-1)
        return {"logits": self.head(x), "hidden": x}


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 10))
