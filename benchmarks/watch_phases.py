"""Where a logged step's host time goes inside gradhealth: a per-phase profile (ms per step).

``python -m benchmarks.watch_phases`` (``--steps N``, ``--workloads a,b``, ``--every K``,
``--json PATH``). Unlike the interleaved ratios of :mod:`benchmarks.bench_watch`, these figures
time only gradhealth's own code (``time.perf_counter`` around each entry point the watcher's
hooks call, and around each phase inside them), so the load of a shared machine moves them
much less: the work of other processes lands in the bare step, which is not timed here.

Phases (``hooks`` is the total of the top-level entry points; the others are inside it):

* ``hooks``: every hook gradhealth runs in the step (root-module pre/post, the output tensor
  hook, the end of the backward, the optimizer pre/post hooks, ``observe``).
* ``backward_end``: the clip fingerprints taken at the end of the backward pass.
* ``measure_grads``: the fused norms and the clip fingerprints, queued on the device.
* ``read``: the host transfer(s) of the step and their decoding (``transfer``); inside it
  ``read:to_host`` (the device-to-host copy) and ``read:decode_clip`` (clip coefficients).
* ``assemble``: the record to :class:`~gradhealth.detectors.StepStats` (``step_stats``).
* ``detectors``: the detector chain, and each detector on its own (``det:<name>``).
* ``record_rest``: :meth:`RunLog.record` minus the detectors (history, events, store rows).

The wrappers are installed on the classes and modules (never on the user's model) for the
duration of one run and removed afterwards. The figures include the wrappers' own cost (two
``perf_counter`` calls per wrapped call, about 0.1 us each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager

import torch

from gradhealth import detectors as det_mod
from gradhealth.detectors.base import Detector, chain
from gradhealth.watch import _readback, _record, never, runlog, watch
from gradhealth.watch import watcher as watcher_mod
from gradhealth.watch.instruments import Instruments

from .bench_watch import DEFAULT_WORKLOADS, WORKLOADS, checked_args, run_block

_TOP = ("_on_root_pre", "_on_root_post", "_on_backward_end", "_on_pre_step", "_on_post_step", "observe",
        "_output_hook")


class Clock:
    """Accumulated seconds per phase; ``depth`` keeps nested entry points from counting twice."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, name: str, fn, top: bool = False):
        total = self.total

        def timed(*args, **kwargs):
            if top:
                self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if not top or self.depth == 1:
                    total[name] += time.perf_counter() - t0
                if top:
                    self.depth -= 1

        return timed

    def wrap_hook_factory(self, fn):
        """``Watcher._output_hook`` returns the tensor hook: time the hook, not the factory."""
        def factory(*args, **kwargs):
            return self.wrap("hooks", fn(*args, **kwargs), top=True)
        return factory


def timed_detectors(clock: Clock) -> Detector:
    """The default detector chain with each member timed (same members, same order)."""
    members = [det_mod.nonfinite(), det_mod.exploding_vanishing(), det_mod.update_ratio(), det_mod.grad_spikes(),
               det_mod.loss_spikes(), det_mod.early_divergence(), det_mod.dead_units(), det_mod.saturation()]
    timed = [Detector(d.init, clock.wrap(f"det:{d.name}", d.update), d.name,
                      None if d.update_many is None else clock.wrap(f"det:{d.name}", d.update_many))
             for d in members]
    c = chain(*timed, name="default")
    return Detector(c.init, clock.wrap("detectors", c.update), c.name, clock.wrap("detectors", c.update_many))


@contextmanager
def instrumented(clock: Clock):
    """Install the timing wrappers; restore every attribute afterwards."""
    W = watcher_mod.Watcher
    saved = []

    def patch(owner, attr, new):
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    for name in _TOP:
        fn = getattr(W, name)
        patch(W, name, clock.wrap_hook_factory(fn) if name == "_output_hook" else clock.wrap("hooks", fn, top=True))
    patch(Instruments, "measure_grads", clock.wrap("measure_grads", Instruments.measure_grads))
    patch(Instruments, "backward_end", clock.wrap("backward_end", Instruments.backward_end))
    patch(_readback, "transfer", clock.wrap("read", _readback.transfer))
    patch(_readback, "to_host", clock.wrap("read:to_host", _readback.to_host))
    patch(_record, "decode_clip", clock.wrap("read:decode_clip", _record.decode_clip))
    patch(runlog, "step_stats", clock.wrap("assemble", runlog.step_stats))
    patch(runlog.RunLog, "record", clock.wrap("record", runlog.RunLog.record))
    try:
        yield
    finally:
        for owner, attr, old in reversed(saved):
            setattr(owner, attr, old)


def profile(key: str, steps: int, every: int) -> dict:
    wl = WORKLOADS[key]()
    opt = wl.optimizer()
    run_block(wl, opt, 5, "bare")
    clock = Clock()
    with warnings.catch_warnings(), instrumented(clock):
        warnings.simplefilter("ignore")
        w = watch(wl.model, opt, every=every, detail_every=never(), detectors=timed_detectors(clock))
        try:
            run_block(wl, opt, 5, "warm", w)        # step 0 and the fingerprint warm-up: not counted
            clock.total.clear()
            t0 = time.perf_counter()
            step_times = run_block(wl, opt, steps, "watched", w)
            wall = time.perf_counter() - t0
        finally:
            w.remove()
    ms = {k: 1e3 * v / steps for k, v in clock.total.items()}
    ms["record_rest"] = ms.get("record", 0.0) - ms.get("detectors", 0.0)
    ms.pop("record", None)
    return {"workload": key, "name": wl.name, "every": every, "steps": steps,
            "step_ms": 1e3 * statistics.median(step_times), "wall_ms": 1e3 * wall / steps, "phases_ms": ms}


def print_profile(p: dict) -> None:
    ph = p["phases_ms"]
    print(f"\n{p['name']} (every={p['every']}, {p['steps']} steps; median step {p['step_ms']:.3f} ms)")
    order = ["hooks", "backward_end", "measure_grads", "read", "read:to_host", "read:decode_clip", "assemble",
             "detectors", "record_rest"]
    for k in order + sorted(k for k in ph if k.startswith("det:")):
        if k in ph:
            share = f"{100 * ph[k] / p['step_ms']:5.1f}% of a step" if k == "hooks" else ""
            print(f"  {k:26s} {ph[k]:8.4f} ms/step  {share}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.watch_phases")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="profiles per workload; the median of each phase")
    ap.add_argument("--workloads", default=",".join(w for w in DEFAULT_WORKLOADS if w != "mlp24x1024"))
    ap.add_argument("--json", default=None, metavar="PATH")
    args, keys = checked_args(ap, argv, counts=("steps", "every", "repeats"))
    torch.set_num_threads(1)
    out = []
    for key in keys:
        runs = [profile(key, args.steps, args.every) for _ in range(args.repeats)]
        phases = set().union(*(r["phases_ms"] for r in runs))
        med = dict(runs[0])
        med["phases_ms"] = {k: statistics.median(r["phases_ms"].get(k, 0.0) for r in runs) for k in phases}
        med["spread_ms"] = {k: [min(r["phases_ms"].get(k, 0.0) for r in runs),
                                max(r["phases_ms"].get(k, 0.0) for r in runs)] for k in phases}
        med["step_ms"] = statistics.median(r["step_ms"] for r in runs)
        print_profile(med)
        out.append(med)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
