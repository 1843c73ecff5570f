"""Running the cells of a grid: a per-cell JSON cache, a process pool, a time estimate (torch)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from . import _cells
from ._spec import TrainabilitySpec

__all__ = ["CellCache", "run_cells", "estimate_seconds", "default_cache_dir"]

_FIELDS = ("accuracy", "loss_init", "loss_final", "diverged", "steps_done", "gain", "seconds")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradhealth/trainability`` (``~/.cache/...`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradhealth" / "trainability"


class CellCache:
    """One JSON file per cell under ``root``, named by :meth:`TrainabilitySpec.cell_key`.

    Written atomically (a temporary file, then ``os.replace``), so a run killed mid-write
    leaves either the old state or the whole record; an unreadable file counts as missing.
    """

    def __init__(self, root: Path | None):
        self.root = None if root is None else Path(root)

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        try:
            rec = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or any(f not in rec for f in _FIELDS):
            return None
        return {f: (math.nan if rec[f] is None else rec[f]) for f in _FIELDS}

    def put(self, key: str, rec: dict) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        clean = {f: (None if isinstance(rec[f], float) and math.isnan(rec[f]) else rec[f]) for f in _FIELDS}
        tmp.write_text(json.dumps(clean), encoding="utf-8")
        os.replace(tmp, self.root / f"{key}.json")


def _make_model(spec: TrainabilitySpec, sigma_w2: float, depth: int, n_in: int, factory):
    if factory is None:
        return _cells.build_net(spec, sigma_w2, depth, n_in)
    torch.manual_seed(spec.seed)           # factories initialise from the global RNG
    return factory(depth, sigma_w2)


def compute_cell(spec: TrainabilitySpec, sigma_w2: float, depth: int, x, y, factory=None) -> dict:
    """One cell, in this process, on one torch thread, with the global RNG state and the
    thread count restored afterwards. One thread wherever a cell runs (here, in a worker, in
    a test's oracle): the thread count changes the order of the matrix products' sums, and a
    deep net's training amplifies that into another accuracy.

    A failure of the user's factory (or of its model) becomes ``{"error": "Type: message"}``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        try:
            model = _make_model(spec, sigma_w2, depth, x.shape[1], factory)
            return _cells.train_cell(spec, model, x, y)
        except Exception as exc:           # noqa: BLE001 - the user's code: reported, not raised here
            if factory is None:
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            return {"error": f"{type(exc).__name__}: {first}"}
        finally:
            torch.set_num_threads(threads)


_WORKER: dict = {}


def _worker_init(x: np.ndarray, y: np.ndarray, factory) -> None:
    _WORKER.update(x=torch.from_numpy(x), y=torch.from_numpy(y), factory=factory)


def _worker_cell(spec: TrainabilitySpec, sigma_w2: float, depth: int) -> dict:
    return compute_cell(spec, sigma_w2, depth, _WORKER["x"], _WORKER["y"], _WORKER["factory"])


def run_cells(spec: TrainabilitySpec, todo: list[tuple[int, int]], data: tuple[np.ndarray, np.ndarray],
              *, jobs: int = 1, factory=None,
              on_cell: Callable[[tuple[int, int], dict], None] | None = None) -> dict:
    """Train the cells ``todo`` (``(depth index, sigma_w2 index)``); ``{cell: record}``.

    ``jobs > 1`` runs them in that many spawned processes (one torch thread each), deepest
    cells first so the pool ends together; ``jobs = 1`` runs here with one torch thread (the
    caller's thread count is restored). Each finished cell is passed to ``on_cell`` at once
    (the caller caches it), so an interrupted run keeps what it finished.
    """
    out: dict = {}
    order = sorted(todo, key=lambda c: -spec.depths[c[0]])
    if jobs <= 1 or len(order) <= 1:
        x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
        for c in order:
            out[c] = compute_cell(spec, spec.sigma_w2[c[1]], spec.depths[c[0]], x, y, factory)
            if on_cell is not None:
                on_cell(c, out[c])
        return out
    with ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=get_context("spawn"),
                             initializer=_worker_init, initargs=(data[0], data[1], factory)) as pool:
        futs = {pool.submit(_worker_cell, spec, spec.sigma_w2[c[1]], spec.depths[c[0]]): c for c in order}
        try:
            for fut in as_completed(futs):
                c = futs[fut]
                out[c] = fut.result()
                if on_cell is not None:
                    on_cell(c, out[c])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return out


def estimate_seconds(spec: TrainabilitySpec, todo: list[tuple[int, int]], data, *, jobs: int = 1,
                     factory=None) -> float:
    """Seconds the cells ``todo`` will take, from timing cells of 1 and 4 steps here.

    At the smallest and the largest depth (capped at 32) a cell is timed with 1 and with 4 SGD
    steps: the difference gives the cost of a step, the rest the fixed cost (the probe, the
    evaluations); both are interpolated linearly in depth. The sum is divided over ``jobs``
    processes, plus about 4 s to start them.
    """
    if not todo:
        return 0.0
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    w = spec.sigma_w2[len(spec.sigma_w2) // 2]
    depths = sorted({spec.depths[0], min(spec.depths[-1], 32)})
    step, fixed = [], []
    for d in depths:
        t1, t4 = (compute_cell(replace(spec, steps=n), w, d, x, y, factory).get("seconds", 0.0)
                  for n in (1, 4))
        step.append(max(t4 - t1, 0.0) / 3.0)
        fixed.append(max(t1 - step[-1], 0.0))
    total = 0.0
    for i, _ in todo:
        d = spec.depths[i]
        s = float(np.interp(d, depths, step, right=step[-1] * d / depths[-1]))
        f = float(np.interp(d, depths, fixed, right=fixed[-1] * d / depths[-1]))
        total += f + s * spec.steps
    par = min(max(jobs, 1), len(todo))
    return total / par + (4.0 if par > 1 else 0.0)
