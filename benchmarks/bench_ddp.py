"""Overhead of :func:`gradhealth.watch` on 2-rank DDP training steps (gloo, CPU), vs bare DDP.

``python -m benchmarks.bench_ddp`` (``--quick`` for a short smoke run, ``--json PATH`` to write
the figures, ``--workloads a,b`` to pick workloads, ``--world N`` for more ranks; ``--help``).

Every rank runs the same :mod:`benchmarks.bench_watch` workload wrapped in
``DistributedDataParallel`` (its own batch, one intra-op thread), and the same configurations,
in one process group, in the same order:

* ``bare``: forward, backward (DDP's bucketed all-reduce), ``optimizer.step()``, ``zero_grad``.
* ``floor``: a bare step plus one fused ``torch._foreach_norm`` over all the (averaged)
  gradients and one host read, just before ``optimizer.step()`` (what any per-layer gradient
  monitor must at least do; see ``bench_watch``).
* ``every=1`` / ``every=10``: ``watch(ddp_model, opt, every=..., detail_every=never())`` with
  ``observe(loss)`` each step (the statistics of the averaged gradients, see
  ``docs/distributed.md``); ``detail``: every step a detail step; ``every=*+default`` add the
  default detail schedule amortised, as in ``bench_watch``.

Method (``bench_watch``'s): blocks of ``N`` steps of each configuration in turn, the order
rotated each repeat, a discarded warm-up round, a watcher created before its block with one
untimed step. A block's figure is the median over its 10-step windows of the window mean; a
DDP step is as slow as its slowest rank, so each block's figure is the maximum over the ranks
(one ``all_reduce(MAX)`` after the block, outside the timing). Reported: the median over
repeats, its spread, and the ratios to ``bare`` and to ``floor``; and, as a check on a loaded
machine, the *paired* ratio: the median over rounds of each round's block over that round's
bare block.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks import bench_watch as bw

DEFAULT_WORKLOADS = ["resmlp8x256", "narrow128x32"]
STEPS = {"resmlp8x256": 50, "narrow128x32": 20}   # per block (a DDP step costs ~10x a 1-process one)
KEYS = list(bw.CONFIGS)          # bare, floor, every=1, every=10, detail
TIMEOUT_S = 120                  # process-group timeout: a mistake fails instead of hanging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_workload(key: str, rank: int):
    """The workload with its model wrapped in DDP and this rank's own batch and targets."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    wl = bw.WORKLOADS[key]()                  # same seed on every rank: the same initial model
    g = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(wl.x.shape, generator=g)
    out = wl.model(x)
    if out.dim() == 2 and out.shape[1] == 10:  # classification workloads
        y = torch.randint(0, 10, (x.shape[0],), generator=g)
        wl.loss_fn = lambda o: torch.nn.functional.cross_entropy(o, y)
    else:
        t = torch.randn(out.shape, generator=g)
        wl.loss_fn = lambda o: torch.nn.functional.mse_loss(o, t)
    wl.x = x
    wl.model = DDP(wl.model)
    return wl


def _bench_rank(key: str, steps: int, repeats: int) -> dict:
    """On every rank: the interleaved blocks; returns {config: [block figure (max over ranks)]}."""
    import torch.distributed as dist

    wl = _rank_workload(key, dist.get_rank())
    opt = wl.optimizer()
    res: dict[str, list[float]] = {k: [] for k in KEYS}
    bw.run_block(wl, opt, 3, "bare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(-1, repeats):
            order = KEYS[rep % len(KEYS):] + KEYS[:rep % len(KEYS)]
            for k in order:
                dist.barrier()
                fig = bw.timed_config(wl, opt, k, max(bw.WINDOW, steps // 2) if rep < 0 else steps)
                slowest = torch.tensor([fig], dtype=torch.float64)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                if rep >= 0:
                    res[k].append(float(slowest))
    return res


def _entry(rank: int, world: int, port: int, out_dir: str, jobs: list) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    path = Path(out_dir) / f"rank{rank}.json"
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        out = {key: _bench_rank(key, steps, repeats) for key, steps, repeats in jobs}
        path.write_text(json.dumps({"ok": True, "result": out}))
    except BaseException as exc:  # report it; the other rank's collective times out
        path.write_text(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(jobs: list, world: int) -> dict:
    """Run the jobs ``[(workload, steps, repeats), ...]`` on ``world`` gloo ranks; rank 0's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(_entry, args=(world, _free_port(), d, jobs), nprocs=world, join=False,
                                 start_method="spawn")
        while True:
            try:
                if ctx.join(timeout=1.0):
                    break
            except mp.ProcessExitedException:
                break
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        got = []
        for r in range(world):
            f = Path(d) / f"rank{r}.json"
            if not f.exists():
                raise RuntimeError(f"rank {r} wrote nothing (it crashed)")
            got.append(json.loads(f.read_text()))
    for r, g in enumerate(got):
        if not g["ok"]:
            raise RuntimeError(f"rank {r}: {g['error']}\n{g['traceback']}")
    return got[0]["result"]


def paired_ratios(figs: dict[str, list[float]]) -> dict[str, float]:
    """Per configuration, the median over rounds of its block figure divided by the same round's
    bare block: on a loaded machine, a slow spell that lasts a round hits both terms alike."""
    bare = figs["bare"]
    return {k: statistics.median(v / b for v, b in zip(vals, bare)) for k, vals in figs.items()}


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_ddp")
    ap.add_argument("--quick", action="store_true", help="short blocks, few repeats (smoke run; noisy)")
    ap.add_argument("--steps", type=int, default=None, help="steps per block (default: per workload; "
                    "a multiple of 10)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick: 2)")
    ap.add_argument("--workloads", default=None, help=f"comma-separated, of {', '.join(bw.WORKLOADS)} "
                    f"(default: {','.join(DEFAULT_WORKLOADS)})")
    ap.add_argument("--world", type=int, default=2, help="number of ranks (default 2)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write one record per workload x configuration")
    args = ap.parse_args(argv)
    keys = args.workloads.split(",") if args.workloads else DEFAULT_WORKLOADS
    bad = [k for k in keys if k not in bw.WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(bw.WORKLOADS)}")
    if args.world < 2:
        ap.error(f"--world must be at least 2, got {args.world}")
    return args, keys


def main(argv=None) -> int:
    args, keys = parse(sys.argv[1:] if argv is None else argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, DDP on {args.world} gloo ranks (CPU, 1 thread each), load {load:.2f}; "
          "interleaved rotated blocks, warm-up discarded; ms/step = median over repeats of the block "
          "figure of the slowest rank", flush=True)
    jobs = []
    about = {}
    for key in keys:
        wl = bw.WORKLOADS[key]()
        about[key] = SimpleNamespace(key=key, name=f"DDP x{args.world}: {wl.name}", opt_name=wl.opt_name)
        steps = STEPS.get(key, wl.steps)
        steps = max(bw.WINDOW, steps // 5 // bw.WINDOW * bw.WINDOW) if args.quick else steps
        jobs.append((key, args.steps or steps, args.repeats or (2 if args.quick else 7)))
    t0 = time.perf_counter()
    out = run_ranks(jobs, args.world)
    recs: list[dict] = []
    for key, steps, repeats in jobs:
        med = {k: (statistics.median(v), (min(v), max(v))) for k, v in out[key].items()}
        wl = about[key]
        mine = bw.records_for(wl, steps, repeats, med)
        paired = paired_ratios(out[key])
        for r in mine:
            r["world"] = args.world
            r["paired_vs_bare"] = paired.get(r["config"])
        print(f"\n{wl.name}: {repeats} repeats x {steps} steps", flush=True)
        bw.print_table(mine)
        print("paired /bare (median over rounds of the round's block / that round's bare block): "
              + ", ".join(f"{k} {v:.3f}" for k, v in paired.items() if k != "bare"), flush=True)
        recs.extend(mine)
    print("\n/bare, /floor: ratio of the medians; floor = bare DDP step + one fused _foreach_norm of the "
          "averaged gradients + one host read; every=*+default: the default detail schedule amortised.")
    if args.json:
        meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, world=args.world,
                    threads=1, load_start=load, seconds=time.perf_counter() - t0, quick=args.quick)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "records": recs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
