"""Workers for the 2-rank tests (module-level so the spawn start method can import them)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

import gradhealth

STEPS = 4
BATCH = 16


def model_and_data():
    torch.manual_seed(0)
    layers = []
    for _ in range(5):
        layers += [nn.Linear(12, 12), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(STEPS, BATCH, 12, generator=g)
    ys = torch.randint(0, 3, (STEPS, BATCH), generator=g)
    return model, xs, ys


def _norms(history):
    return [[s.step, s.global_grad_norm, [float(x) for x in s.grad_norm]] for s in history]


def single_process(nan_step=None, nan_rank_rows=None):
    """The truth: full batch in one process (DDP averages equal-sized shards' mean losses)."""
    model, xs, ys = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, on_nonfinite="skip") as w:
            for s in range(STEPS):
                x = xs[s].clone()
                if s == nan_step:
                    x[nan_rank_rows] = float("nan")
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), ys[s]).backward()
                opt.step()
    return {"norms": _norms(w.history), "events": [[e.step, e.kind, e.layer] for e in w.events],
            "params": [float(p.detach().double().sum()) for p in model.parameters()]}


def ddp_worker(rank, world, nan_step=None, nan_on_rank=None, run_dir=None):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, xs, ys = model_and_data()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    per = BATCH // world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(ddp, opt, on_nonfinite="skip", run_dir=run_dir) as w:
            for s in range(STEPS):
                x = xs[s, rank * per:(rank + 1) * per].clone()
                if s == nan_step and rank == nan_on_rank:
                    x[0] = float("nan")
                opt.zero_grad()
                nn.functional.cross_entropy(ddp(x), ys[s, rank * per:(rank + 1) * per]).backward()
                opt.step()
    return {"norms": _norms(w.history), "events": [[e.step, e.kind, e.layer] for e in w.events],
            "params": [float(p.detach().double().sum()) for p in model.parameters()],
            "skipped": [s.step for s in w.history if s.skipped],
            "replays": [[r.step, r.found, r.direction, r.module, r.cause, r.transient, r.stats.get("ranks_found")]
                        for r in w.replays],
            "messages": [e.message for e in w.events if e.kind in ("nonfinite", "guard")]}


def fsdp_worker(rank, world, nan_step=None, nan_on_rank=None, policy="warn", layer_nan=None):
    """FSDP2 (fully_shard per Linear and on the root). ``nan_step``/``nan_on_rank``: a NaN in
    that rank's batch; ``layer_nan = (step, rank, layer)``: a forward hook makes that layer's
    output NaN on that rank at that step (the fault inside the model, not the batch)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, xs, ys = model_and_data()
    mesh = init_device_mesh("cpu", (world,))
    state = {"step": -1}
    if layer_nan is not None:
        at_step, at_rank, layer = layer_nan

        def plant(_mod, _inp, out):
            if rank == at_rank and state["step"] == at_step:
                out = out.clone()
                out[0, 0] = float("nan")
            return out

        model[layer].register_forward_hook(plant)
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    per = BATCH // world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(model, opt, on_nonfinite=policy) as w:
            for s in range(STEPS):
                state["step"] = s
                x = xs[s, rank * per:(rank + 1) * per].clone()
                if s == nan_step and rank == nan_on_rank:
                    x[0] = float("nan")
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), ys[s, rank * per:(rank + 1) * per]).backward()
                opt.step()
    full = [float(p.full_tensor().detach().double().sum()) for p in model.parameters()]
    return {"norms": _norms(w.history), "events": [[e.step, e.kind, e.layer] for e in w.events],
            "msgs": [e.message for e in w.events], "params": full,
            "skipped": [s.step for s in w.history if s.skipped],
            "replays": [[r.step, r.found, r.direction, r.module, r.cause, r.stats.get("ranks_found")]
                        for r in w.replays]}


def close(a, b, rel=1e-4):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def ddp_amp_worker(rank, world, blow_step=None, blow_rank=None, use_scaler=True):
    """DDP under fp16 autocast on CPU with torch.amp.GradScaler("cpu"); at ``blow_step`` rank
    ``blow_rank`` multiplies its loss by 1e6, so its fp16 gradients overflow (an Inf the
    all-reduce brings to every rank: both scalers skip that step)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, xs, ys = model_and_data()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if use_scaler else None
    per = BATCH // world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradhealth.watch(ddp, opt, scaler=scaler) as w:
            for s in range(STEPS):
                x, y = xs[s, rank * per:(rank + 1) * per], ys[s, rank * per:(rank + 1) * per]
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.cross_entropy(ddp(x), y)
                if s == blow_step and rank == blow_rank:
                    loss = loss * 1e6
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
    return {"norms": _norms(w.history), "events": [[e.step, e.kind, e.layer] for e in w.events],
            "skipped": [[s.step, s.skip_reason] for s in w.history if s.skipped],
            "params": [float(p.detach().double().sum()) for p in model.parameters()]}
