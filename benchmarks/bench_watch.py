"""Overhead of :func:`gradhealth.watch` on CPU training steps, and the cost of forensic replay.

``python -m benchmarks.bench_watch`` (``--quick`` for a short smoke run, ``--json PATH`` to
write the figures, ``--workloads a,b`` to pick workloads; ``--help`` for the rest).

Configurations (per workload, all in one process, on one model and one optimizer):

* ``bare``: forward, backward, ``optimizer.step()``, ``zero_grad``.
* ``floor``: a bare step plus what any per-layer gradient monitor must at least do: one fused
  ``torch._foreach_norm`` over all gradients per (device, dtype) group, and one device-to-host
  read of the result (``.tolist()``), just before ``optimizer.step()`` (where the watcher reads).
* ``every=1`` / ``every=10``: ``watch(model, opt, every=..., detail_every=never())``, with
  ``watcher.observe(loss)`` each step: the cheap per-step statistics (per-layer gradient norms,
  global norm before/after clipping, non-finite counts, loss, learning rate) on every step /
  every 10th step, forensic-replay references kept on every step; detail statistics off.
* ``detail``: every step a *detail* step (parameter norms, update ratios, output-gradient
  norms, activation statistics). The default detail schedule (steps 0, 1, 2, 4, ..., 64, then
  every 100th) costs, in the steady state, ``(t_detail - t_every1) / 100`` per step; the rows
  ``every=1+default`` and ``every=10+default`` add that to ``every=1`` and ``every=10``.

Method: for each repeat, a block of ``N`` steps of every configuration in turn, the order
rotated by one configuration each repeat, so slow drifts of a shared machine hit every
configuration alike; the first round of (shorter) blocks is a warm-up and is discarded. A
watcher is created before its block, runs one untimed step (step 0) and is removed after it
(neither timed); the settling of the logged steps still waiting at the block's end (reading
``watcher.events``) is timed, as part of the last step. A block's figure is the median over
its windows of the window's mean step time: windows of ``WINDOW * SETTLE_EVERY`` steps where
the block holds them (a window of ``every=10`` then holds its logged steps *and* their
settling, done ``SETTLE_EVERY`` at a time), else the whole block is one window. The reported
figure is the median over repeats of the block figures, with the
spread (min..max of block figures). Ratios: watched / bare and watched / floor of those medians.

Replay: the time of one forensic replay of a failing step (it runs only when a step goes
non-finite) against a bare step, and ``torch.autograd.set_detect_anomaly(True)`` (which
costs on every step) against a bare step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from gradhealth.watch import never, watch
from gradhealth.watch.runlog import SETTLE_EVERY

WINDOW = 10  # steps per window of a block (the period of every=10)


# ---------------------------------------------------------------------------------- workloads

@dataclass
class Workload:
    key: str
    name: str
    model: nn.Module
    x: torch.Tensor
    loss_fn: object
    opt_name: str
    steps: int      # default block length (a multiple of WINDOW; of WINDOW * SETTLE_EVERY if longer)

    def optimizer(self, model: nn.Module | None = None):
        """The workload's optimizer over ``model``'s parameters (default: the workload's model)."""
        params = (self.model if model is None else model).parameters()
        if self.opt_name == "adamw":
            return torch.optim.AdamW(params, lr=1e-4)
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9)


def _classify(batch: int, n_out: int = 10):
    y = torch.randint(0, n_out, (batch,))
    return lambda out: nn.functional.cross_entropy(out, y)


def mlp_case(batch: int = 64) -> Workload:
    torch.manual_seed(0)
    layers = []
    for _ in range(24):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    layers.append(nn.Linear(1024, 10))
    x = torch.randn(batch, 1024)
    return Workload("mlp24x1024", f"MLP 24x1024, batch {batch}", nn.Sequential(*layers), x,
                    _classify(batch), "sgd", 10)


class ResBlock(nn.Module):
    """``x + Linear(ReLU(LayerNorm(x)))``."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc(torch.relu(self.norm(x)))


def resmlp_case(blocks: int = 8, width: int = 256, batch: int = 64) -> Workload:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), *[ResBlock(width) for _ in range(blocks)],
                          nn.LayerNorm(width), nn.Linear(width, 10))
    x = torch.randn(batch, width)
    return Workload("resmlp8x256", f"residual MLP {blocks}x{width}, batch {batch}", model, x,
                    _classify(batch), "sgd", 100)


def narrow_case(depth: int = 128, width: int = 32, batch: int = 64) -> Workload:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 10))
    x = torch.randn(batch, width)
    return Workload("narrow128x32", f"narrow MLP {depth}x{width} tanh, batch {batch}", nn.Sequential(*layers),
                    x, _classify(batch), "sgd", 50)


def transformer_case() -> Workload:
    """2-layer pre-LN encoder, d_model 64, 4 heads, seq 32, batch 16 (a step of a few ms)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = nn.Sequential(enc, nn.Linear(64, 64))
    x = torch.randn(16, 32, 64)
    y = torch.randn(16, 32, 64)
    return Workload("transformer2x64", "pre-LN Transformer 2x64, seq 32, batch 16", model, x,
                    lambda out: nn.functional.mse_loss(out, y), "adamw", 100)


def big_transformer_case() -> Workload:
    """The earlier 4x256 encoder (~0.7 s a step on one thread): opt-in with --workloads."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
    enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    model = nn.Sequential(enc, nn.Linear(256, 256))
    x = torch.randn(16, 128, 256)
    y = torch.randn(16, 128, 256)
    return Workload("transformer4x256", "TransformerEncoder 4x256, seq 128, batch 16", model, x,
                    lambda out: nn.functional.mse_loss(out, y), "adamw", 10)


WORKLOADS = {"mlp24x1024": mlp_case, "resmlp8x256": resmlp_case, "narrow128x32": narrow_case,
             "transformer2x64": transformer_case, "transformer4x256": big_transformer_case}
DEFAULT_WORKLOADS = ["mlp24x1024", "resmlp8x256", "narrow128x32", "transformer2x64"]

# ---------------------------------------------------------------------------------- timing

CONFIGS = {
    "bare": None,
    "floor": None,
    "every=1": dict(every=1, detail_every=never()),
    "every=10": dict(every=10, detail_every=never()),
    "detail": dict(every=1, detail_every=1),
}


def floor_read(params) -> list[float]:
    """One fused ``_foreach_norm`` per (device, dtype) group of the gradients, one host read."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    if not groups:
        return []
    parts = [torch.stack(torch._foreach_norm(gs)) for gs in groups.values()]
    out = parts[0] if len(parts) == 1 else torch.cat([t.float().to(parts[0].device) for t in parts])
    return out.tolist()


def train_step(model: nn.Module, x: torch.Tensor, loss_fn, opt, params: list, floor: bool, w=None) -> None:
    """One step of a configuration: forward, backward, (the floor's read), optimizer step,
    ``zero_grad``, and ``w.observe(loss)`` when watched."""
    loss = loss_fn(model(x))
    loss.backward()
    if floor:
        floor_read(params)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if w is not None:
        w.observe(loss)


def run_block(wl: Workload, opt, steps: int, mode: str, w=None) -> list[float]:
    """Time ``steps`` steps of configuration ``mode``; returns the per-step seconds."""
    model, x, loss_fn = wl.model, wl.x, wl.loss_fn
    params = [p for p in model.parameters() if p.requires_grad]
    floor = mode == "floor"
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, x, loss_fn, opt, params, floor, w)
        times.append(time.perf_counter() - t0)
    if w is not None and times:
        t0 = time.perf_counter()
        len(w.events)   # (settles the logged steps still waiting: their cost belongs to this block)
        times[-1] += time.perf_counter() - t0
    return times


def block_figure(ts: list[float]) -> float:
    """Median over the block's windows of the window's mean step time. A window is
    ``WINDOW * SETTLE_EVERY`` steps when the block holds one: ``every=10`` settles its logged
    steps (detectors, store) ``SETTLE_EVERY`` at a time (or after ``SETTLE_WITHIN_S``), and a
    window must hold that cost as it holds the logged step; a shorter block is one window (its
    mean step time: every settling it did is in it)."""
    n = WINDOW * SETTLE_EVERY if len(ts) >= WINDOW * SETTLE_EVERY else len(ts)
    windows = [ts[i:i + n] for i in range(0, len(ts) - n + 1, n)]
    return statistics.median(sum(win) / len(win) for win in windows)


def timed_config(wl: Workload, opt, key: str, steps: int) -> float:
    cfg = CONFIGS[key]
    if cfg is None:
        return block_figure(run_block(wl, opt, steps, key))
    w = watch(wl.model, opt, **cfg)
    try:
        run_block(wl, opt, 1, key, w)  # step 0 (always logged) left out of the timing
        return block_figure(run_block(wl, opt, steps, key, w))
    finally:
        w.remove()


def bench_overhead(wl: Workload, steps: int, repeats: int):
    """Interleaved, rotated blocks; returns (median, (min, max)) seconds per configuration."""
    opt = wl.optimizer()
    keys = list(CONFIGS)
    res: dict[str, list[float]] = {k: [] for k in keys}
    run_block(wl, opt, 3, "bare")  # allocator, optimizer state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the watcher's own warnings (e.g. vanishing) stay quiet
        for rep in range(-1, repeats):  # rep -1: the warm-up round, discarded
            order = keys[rep % len(keys):] + keys[:rep % len(keys)]
            for key in order:
                fig = timed_config(wl, opt, key, max(WINDOW, steps // 2) if rep < 0 else steps)
                if rep >= 0:
                    res[key].append(fig)
    return {k: (statistics.median(v), (min(v), max(v))) for k, v in res.items()}


def records_for(wl: Workload, steps: int, repeats: int, med: dict) -> list[dict]:
    """One record per configuration (and the two amortised default-schedule rows)."""
    ms = {k: 1e3 * m for k, (m, _) in med.items()}
    spread = {k: [1e3 * lo, 1e3 * hi] for k, (_, (lo, hi)) in med.items()}
    det = (ms["detail"] - ms["every=1"]) / 100.0
    ms["every=1+default"], ms["every=10+default"] = ms["every=1"] + det, ms["every=10"] + det
    spread["every=1+default"] = spread["every=10+default"] = None
    order = ["bare", "floor", "every=1", "every=10", "every=1+default", "every=10+default", "detail"]
    return [dict(workload=wl.key, name=wl.name, optimizer=wl.opt_name, config=k, ms_per_step=ms[k],
                 spread_ms=spread[k], ratio_vs_bare=ms[k] / ms["bare"], ratio_vs_floor=ms[k] / ms["floor"],
                 steps=steps, repeats=repeats) for k in order]


# ---------------------------------------------------------------------------------- replay

def bench_replay(wl: Workload, repeats: int):
    """One forensic replay vs one bare step; detect_anomaly step vs bare step."""
    model, x, loss_fn = wl.model, wl.x, wl.loss_fn
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    bare, anomaly, replay = [], [], []
    r = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss_fn(model(x)).backward()
        opt.step()
        opt.zero_grad()
        bare.append(time.perf_counter() - t0)
        with torch.autograd.set_detect_anomaly(True):
            t0 = time.perf_counter()
            loss_fn(model(x)).backward()
            opt.step()
            opt.zero_grad()
            anomaly.append(time.perf_counter() - t0)
        # a failing step: NaN planted in the last layer's weight; replay names it
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            last.weight[0, 0] = math.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = watch(model, opt, detail_every=never())
            try:
                loss_fn(model(x)).backward()
                opt.step()
                opt.zero_grad()
            finally:
                w.remove()
        model.load_state_dict(saved)
        r = w.replays[0]
        replay.append(r.seconds)
    return wl.name, statistics.median(bare), statistics.median(anomaly), statistics.median(replay), r


# ---------------------------------------------------------------------------------- output

def print_table(recs: list[dict]) -> None:
    print(f"{'workload':42s} {'opt':5s} {'config':17s} {'ms/step':>9s} {'spread ms':>17s} "
          f"{'/bare':>7s} {'/floor':>7s}")
    for r in recs:
        sp = f"{r['spread_ms'][0]:.2f}..{r['spread_ms'][1]:.2f}" if r["spread_ms"] else "(amortised)"
        print(f"{r['name']:42s} {r['optimizer']:5s} {r['config']:17s} {r['ms_per_step']:9.3f} {sp:>17s} "
              f"{r['ratio_vs_bare']:7.3f} {r['ratio_vs_floor']:7.3f}", flush=True)


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_watch")
    ap.add_argument("--quick", action="store_true", help="short blocks, few repeats (smoke run; noisy)")
    ap.add_argument("--steps", type=int, default=None, help="steps per block, every workload "
                    "(default: per workload, a block of ~0.5-2 s; keep it a multiple of 10)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7 for the 24x1024 MLP, "
                    "15 for the others; --quick: 1 and 3)")
    ap.add_argument("--workloads", default=None,
                    help=f"comma-separated, of {', '.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})")
    ap.add_argument("--json", default=None, metavar="PATH", help="write one record per workload x configuration")
    ap.add_argument("--no-replay", action="store_true", help="skip the forensic-replay comparison")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared machine, 2+ threads turn "
                         "other processes' load into large, uneven stalls)")
    return checked_args(ap, argv)


def checked_args(ap: argparse.ArgumentParser, argv, counts: tuple[str, ...] = ()) -> tuple[argparse.Namespace, list]:
    """``(args, workload keys)`` of ``argv`` (``sys.argv[1:]`` when None); an unknown workload
    in ``--workloads`` (default :data:`DEFAULT_WORKLOADS`), or an option of ``counts`` given
    below 1, is refused with the parser's usage message and exit code 2."""
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    keys = args.workloads.split(",") if args.workloads else list(DEFAULT_WORKLOADS)
    bad = [k for k in keys if k not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(WORKLOADS)}")
    for name in counts:
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name} must be a whole number >= 1, got {v}")
    return args, keys


def plan(wl: Workload, args) -> tuple[int, int]:
    """(steps per block, repeats) for one workload."""
    heavy = wl.steps <= WINDOW
    if args.quick:
        steps, repeats = (WINDOW, 1) if heavy else (max(WINDOW, wl.steps // 5), 3)
    else:
        steps, repeats = wl.steps, (7 if heavy else 15)
    return args.steps or steps, args.repeats or repeats


def main(argv=None) -> int:
    args, keys = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.2f}; interleaved rotated "
          f"blocks, warm-up round discarded; ms/step = median over repeats of block figures", flush=True)
    recs: list[dict] = []
    t_start = time.perf_counter()
    for key in keys:
        wl = WORKLOADS[key]()
        steps, repeats = plan(wl, args)
        med = bench_overhead(wl, steps, repeats)
        mine = records_for(wl, steps, repeats, med)
        print(f"\n{wl.name}: {repeats} repeats x {steps} steps", flush=True)
        print_table(mine)
        recs.extend(mine)
    print("\n/bare, /floor: ratio of the medians; every=*+default add the default detail schedule amortised "
          "((detail - every=1) / 100 per step); floor = bare + one fused _foreach_norm + one host read.")
    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, threads=torch.get_num_threads(),
                load_start=load, seconds=time.perf_counter() - t_start, quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "records": recs}, f, indent=1)
    if not args.no_replay:
        print("\nforensic replay (only on a failing step) vs torch.autograd.set_detect_anomaly(True) (every step):")
        print(f"{'case':46s} {'bare ms':>8s} {'anomaly ms':>11s} {'ratio':>6s} {'replay ms':>10s} {'ratio':>6s}")
        for case in ([mlp_case] if args.quick else [mlp_case, transformer_case]):
            name, b, a, r, rep = bench_replay(case(), 1 if args.quick else 3)
            print(f"{name:46s} {1e3 * b:8.1f} {1e3 * a:11.1f} {a / b:6.2f} {1e3 * r:10.1f} {r / b:6.2f}")
            print(f"  replay said: {rep.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
