"""Watcher overhead interleaved step by step: one identical copy of the model per configuration.

``python -m benchmarks.bench_paired`` (``--workloads a,b``, ``--rounds N``, ``--blocks B``,
``--json PATH``, ``--quick``).

Why a second method beside :mod:`benchmarks.bench_watch`: on a shared or virtual machine the
speed of the CPU itself drifts (the same bare block of 100 steps of the residual MLP took
4.6-8.6 ms a step within one minute here, in wall time *and* in thread CPU time), and blocks of
one configuration after another turn that drift into ratios that move by several percent --
more than the few percent being measured. Here every configuration has its own deep copy of
the model (same weights, same batch, its own optimizer), and one *round* runs one training
step of each copy, in an order rotated every round, so neighbouring steps of the
configurations see the same machine. A block is ``N`` rounds; its ratio is the sum of one
configuration's step times over the sum of the baseline's (a paired ratio: a drift slower than
a round cancels). The figure is the median of the block ratios over ``B`` blocks, with their
min..max.

Configurations: ``bare``; ``bare/2`` (a second bare copy: the A/A control, whose ratio to
``bare`` is the method's resolution on this machine -- copies differ only in where their
memory lies); ``floor`` (bare + one fused ``torch._foreach_norm`` over the
gradients + one host read, before ``optimizer.step()``); ``every=1`` and ``every=10``
(``watch(model, opt, every=..., detail_every=never())`` with ``observe(loss)``, as in
:mod:`benchmarks.bench_watch`). A watcher is attached at the start of each block and runs one untimed step;
at the block's end the logged steps still waiting are settled (``watcher.events``), timed as
part of the block (every logged step's work is counted), and the watcher is removed. The
configurations move to the next copy every block (block ``b`` runs configuration ``k`` on
copy ``(k + b) mod 5``): two copies of one model can differ by a few percent in speed alone
(where their memory lies), and over 5 blocks every configuration has run on every copy.

What it cannot see: effects that need a configuration to run alone for longer than a step
(a watched model's data evicting the others' from the cache is the same for all: each step
of each copy reads its own model anyway).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
import warnings

import torch

from gradhealth.watch import never, watch

from .bench_watch import DEFAULT_WORKLOADS, WINDOW, WORKLOADS, Workload, checked_args, train_step

CONFIGS = ("bare", "bare/2", "floor", "every=1", "every=10")


class _Copy:
    """One model copy (its own optimizer) and the configuration it runs in the current block."""

    def __init__(self, wl: Workload):
        self.model = copy.deepcopy(wl.model)
        self.opt = wl.optimizer(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.x, self.loss_fn = wl.x, wl.loss_fn
        self.key = "bare"
        self.w = None

    def start(self, key: str) -> None:
        """Run configuration ``key`` from now on (a watcher is attached and runs one untimed step)."""
        self.key = key
        if key.startswith("every="):  # ("every=N" for any N)
            self.w = watch(self.model, self.opt, every=int(key.split("=")[1]), detail_every=never())
            self.step()   # step 0 (always logged): not timed

    def step(self) -> float:
        t0 = time.perf_counter()
        train_step(self.model, self.x, self.loss_fn, self.opt, self.params, self.key == "floor", self.w)
        return time.perf_counter() - t0

    def stop(self) -> float:
        """End the block: settle the logged steps still waiting (timed: their cost belongs to
        the block), then remove the watcher (not timed)."""
        if self.w is None:
            return 0.0
        t0 = time.perf_counter()
        len(self.w.events)   # (reading the events settles the waiting steps)
        dt = time.perf_counter() - t0
        self.w.remove()
        self.w = None
        return dt


def bench(wl: Workload, rounds: int, blocks: int) -> dict:
    """Per configuration: median ms/step over blocks and the paired ratios (median, min, max)
    against ``bare`` and ``floor``. Block ``b`` runs configuration ``k`` on copy ``(k + b) mod
    n``: over ``n`` blocks every configuration has run on every copy, so a copy that is faster
    than the others (where its memory lies) favours none of them."""
    n = len(CONFIGS)
    per_block: list[dict[str, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the watcher's own warnings (e.g. vanishing) stay quiet
        copies = [_Copy(wl) for _ in CONFIGS]
        try:
            for _ in range(3):   # warm-up rounds: allocator, optimizer state
                for c in copies:
                    c.step()
            for b in range(blocks):
                for k, key in enumerate(CONFIGS):
                    copies[(k + b) % n].start(key)
                tot = dict.fromkeys(CONFIGS, 0.0)
                for r in range(rounds):
                    j = r % n
                    for c in copies[j:] + copies[:j]:
                        tot[c.key] += c.step()
                for c in copies:
                    tot[c.key] += c.stop()
                per_block.append(tot)
        finally:
            for c in copies:
                if c.w is not None:
                    c.w.remove()
    out: dict = {}
    for k in CONFIGS:
        vs_bare = [b[k] / b["bare"] for b in per_block]
        vs_floor = [b[k] / b["floor"] for b in per_block]
        out[k] = {"ms_per_step": 1e3 * statistics.median(b[k] for b in per_block) / rounds,
                  "ratio_vs_bare": statistics.median(vs_bare), "bare_spread": [min(vs_bare), max(vs_bare)],
                  "ratio_vs_floor": statistics.median(vs_floor), "floor_spread": [min(vs_floor), max(vs_floor)]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_paired")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                    help=f"comma-separated, of {', '.join(WORKLOADS)}")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per block (default: 20 for the 24x1024 MLP, 200 for the others)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="blocks, best a multiple of 5 (default 5 for the 24x1024 MLP, 10 for the others)")
    ap.add_argument("--quick", action="store_true", help="20 rounds x 5 blocks (a smoke run; noisy)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, metavar="PATH")
    args, keys = checked_args(ap, argv, counts=("rounds", "blocks", "threads"))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; configurations interleaved step by "
          "step on identical model copies; ratio = median over blocks of the paired block ratios", flush=True)
    print(f"{'workload':42s} {'config':9s} {'ms/step':>8s} {'/bare':>7s} {'(min..max)':>13s} "
          f"{'/floor':>7s} {'(min..max)':>13s}")
    recs = []
    t0 = time.perf_counter()
    for key in keys:
        wl = WORKLOADS[key]()
        heavy = wl.steps <= WINDOW   # (as bench_watch.plan: the 24x1024 MLP)
        rounds = 20 if args.quick else (args.rounds or (20 if heavy else 200))
        blocks = 5 if args.quick else (args.blocks or (5 if heavy else 10))
        res = bench(wl, rounds, blocks)
        for k, r in res.items():
            b, f = r["bare_spread"], r["floor_spread"]
            print(f"{wl.name:42s} {k:9s} {r['ms_per_step']:8.3f} {r['ratio_vs_bare']:7.3f} "
                  f"{b[0]:6.3f}..{b[1]:5.3f} {r['ratio_vs_floor']:7.3f} {f[0]:6.3f}..{f[1]:5.3f}", flush=True)
            recs.append({"workload": key, "name": wl.name, "config": k, "rounds": rounds, "blocks": blocks, **r})
    if args.json:
        meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0, "quick": args.quick}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "records": recs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
