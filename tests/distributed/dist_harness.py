"""Run a function on 2 gloo ranks on this CPU machine, with a process-group timeout, and
collect what each rank returns (JSON-able)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from pathlib import Path

import torch.multiprocessing as mp

TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    path = Path(out_dir) / f"rank{rank}.json"
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        result = fn(rank, world, *args)
        path.write_text(json.dumps({"ok": True, "result": result}))
    except BaseException as exc:  # report, do not hang the other rank
        path.write_text(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, *args, world: int = 2, out_dir) -> list:
    """``fn(rank, world, *args)`` on ``world`` processes; returns the per-rank results.

    Raises AssertionError with the rank's traceback when a rank failed.
    """
    port = _free_port()
    ctx = mp.start_processes(_entry, args=(world, port, str(out_dir), fn, args), nprocs=world,
                             join=False, start_method="spawn")
    import time

    deadline = time.monotonic() + TIMEOUT_S * 2
    while time.monotonic() < deadline:
        try:
            if ctx.join(timeout=1.0):
                break
        except mp.ProcessExitedException:   # a rank died: its JSON (or its absence) says why
            break
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    results = []
    for r in range(world):
        f = Path(out_dir) / f"rank{r}.json"
        assert f.exists(), f"rank {r} wrote nothing (hang or crash)"
        d = json.loads(f.read_text())
        assert d["ok"], f"rank {r}: {d['error']}\n{d['traceback']}"
        results.append(d["result"])
    return results
