"""Overhead of :func:`gradhealth.watch` on CPU training steps, and the cost of forensic replay.

``python -m benchmarks.bench_watch`` (``--quick`` for a short smoke run).

One process, interleaved: each repeat times a block of ``STEPS`` training steps for every
configuration in turn (bare, watched every step, watched every 10th step, and a block where
every step is a *detail* step), so slow drifts of a shared machine hit every configuration
alike. The figure reported per configuration is the median over repeats of the block's
median step time.

* ``every=1`` / ``every=10``: the cheap per-step statistics (per-layer gradient norms,
  global norm before/after clipping, non-finite counts, loss, learning rate) on every
  step / every 10th step, forensic-replay references kept on every step; detail
  statistics off (``detail_every=never()``) to isolate them.
* ``detail``: every step a detail step (parameter norms, update ratios, output-gradient
  norms, activation statistics). The default schedule makes one step in 100 a detail step
  after step 64, so its amortised cost is ``(t_detail - t_every1) / 100`` per step, added
  to the ``every=1`` and ``every=10`` figures in the "default schedule" columns.

Replay: the time of one forensic replay of a failing step (it runs only when a step goes
non-finite) against a bare step, and ``torch.autograd.set_detect_anomaly(True)`` (which
costs on every step) against a bare step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from gradhealth.watch import never, watch


def mlp_case(batch: int):
    torch.manual_seed(0)
    layers = []
    for _ in range(24):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    layers.append(nn.Linear(1024, 10))
    model = nn.Sequential(*layers)
    x = torch.randn(batch, 1024)
    y = torch.randint(0, 10, (batch,))

    def loss_fn(out):
        return nn.functional.cross_entropy(out, y)
    return f"MLP 24x1024, batch {batch}", model, x, loss_fn


def transformer_case():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
    enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    model = nn.Sequential(enc, nn.Linear(256, 256))
    x = torch.randn(16, 128, 256)
    y = torch.randn(16, 128, 256)

    def loss_fn(out):
        return nn.functional.mse_loss(out, y)
    return "TransformerEncoder 4x256, seq 128, batch 16", model, x, loss_fn


CONFIGS = {
    "bare": None,
    "every=1": dict(every=1, detail_every=never()),
    "every=10": dict(every=10, detail_every=never()),
    "detail": dict(every=1, detail_every=1),
}


def run_block(model, opt, x, loss_fn, steps, cfg, watcher_box, observe=True):
    """Time ``steps`` steps; returns the list of per-step seconds."""
    w = watcher_box.get("w")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = loss_fn(model(x))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if w is not None and observe:
            w.observe(loss)
        times.append(time.perf_counter() - t0)
    return times


def bench_overhead(case, steps: int, repeats: int, opt_name: str = "adamw"):
    name, model, x, loss_fn = case
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-4) if opt_name == "adamw"
           else torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    res = {k: [] for k in CONFIGS}
    best: dict[str, float] = {}
    # warm-up (allocator, optimizer state)
    run_block(model, opt, x, loss_fn, 3, None, {})
    for _ in range(repeats):
        for key, cfg in CONFIGS.items():
            box = {}
            if cfg is not None:
                box["w"] = watch(model, opt, **cfg)
                # leave step 0 (always a detail step) out of the timing
                run_block(model, opt, x, loss_fn, 1, cfg, box)
            try:
                ts = run_block(model, opt, x, loss_fn, steps, cfg, box)
            finally:
                if "w" in box:
                    box["w"].remove()
            res[key].append(statistics.median(ts))
            best[key] = min(best.get(key, math.inf), min(ts))
    med = {k: statistics.median(v) for k, v in res.items()}
    spread = {k: (min(v), max(v)) for k, v in res.items()}
    return name, opt_name, med, spread, best


def bench_replay(case, repeats: int):
    """One forensic replay vs one bare step; detect_anomaly step vs bare step."""
    name, model, x, loss_fn = case
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    bare, anomaly, replay = [], [], []
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
    return name, statistics.median(bare), statistics.median(anomaly), statistics.median(replay), r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_watch")
    ap.add_argument("--quick", action="store_true", help="few steps (smoke run; noisy)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared machine, 2+ threads turn "
                         "other processes' load into large, uneven stalls)")
    args = ap.parse_args(argv if argv is not None else [a for a in sys.argv[1:] if a.startswith("--")])
    torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 9)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {repeats} interleaved repeats "
          f"of {steps} steps per configuration; figures: median of per-block medians (ms/step)")
    cases = [(mlp_case(64), "sgd"), (mlp_case(256), "sgd"), (transformer_case(), "adamw")]
    if args.quick:
        cases = cases[:1]
    hdr = (f"{'case':44s} {'opt':5s} {'bare ms':>8s} {'every=1':>8s} {'every=10':>9s} "
           f"{'e1+dflt':>8s} {'e10+dflt':>9s} {'detail':>7s} | {'best: bare':>10s} {'e=1':>6s} {'e=10':>6s}")
    print(hdr, flush=True)
    rows = []
    for case, opt_name in cases:
        name, opt_name, med, spread, best = bench_overhead(case, steps, repeats, opt_name)
        b = med["bare"]
        det = (med["detail"] - med["every=1"]) / 100.0
        row = (name, opt_name, b, med["every=1"] / b, med["every=10"] / b,
               (med["every=1"] + det) / b, (med["every=10"] + det) / b, med["detail"] / b, spread)
        rows.append(row)
        print(f"{name:44s} {opt_name:5s} {1e3 * b:8.1f} {row[3]:8.3f} {row[4]:9.3f} {row[5]:8.3f} "
              f"{row[6]:9.3f} {row[7]:7.2f} | {1e3 * best['bare']:10.1f} {best['every=1'] / best['bare']:6.3f} "
              f"{best['every=10'] / best['bare']:6.3f}", flush=True)
    print("ratios = watched / bare of the median over repeats of block medians; e1+dflt, e10+dflt add the "
          "default detail schedule (1 step in 100) amortised; best: ratio of the fastest single steps "
          "(contention only adds time); spread (min..max ms of block medians):")
    for name, opt_name, *_, spread in rows:
        print(f"  {name} [{opt_name}]: " + ", ".join(f"{k} {1e3 * lo:.1f}..{1e3 * hi:.1f}"
                                                     for k, (lo, hi) in spread.items()))
    print("\nforensic replay (only on a failing step) vs torch.autograd.set_detect_anomaly(True) (every step):")
    print(f"{'case':46s} {'bare ms':>8s} {'anomaly ms':>11s} {'ratio':>6s} {'replay ms':>10s} {'ratio':>6s}")
    for case in ([mlp_case(64)] if args.quick else [mlp_case(64), transformer_case()]):
        name, b, a, r, rep = bench_replay(case, 1 if args.quick else 3)
        print(f"{name:46s} {1e3 * b:8.1f} {1e3 * a:11.1f} {a / b:6.2f} {1e3 * r:10.1f} {r / b:6.2f}")
        print(f"  replay said: {rep.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
