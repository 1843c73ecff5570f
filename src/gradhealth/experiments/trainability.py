"""Trainability on real data: is a net at ``(sigma_w2, depth)`` trainable? (Schoenholz et al. 2017).

:func:`trainability` trains a plain fully connected net for every cell of a ``sigma_w2 x
depth`` grid and compares the trainable region with ``depth < k xi_c(sigma_w2)``;
:func:`trainability_of` asks the same of a user's model family. Criterion, settings and the
k fit are in ``docs/explain-trainability.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._checks import check_int
from ..errors import ParameterError
from ..theory.trainability import depth_scale_curve, fit_depth_multiple
from ._spec import TrainabilitySpec, check_spec
from .result import TrainabilityResult

__all__ = ["trainability", "trainability_of", "RunOptions", "run_spec"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a grid (not part of the result's identity).

    Attributes:
        jobs: worker processes (1: in this process).
        cache_dir: directory of the per-cell cache (``None``: no cache); a rerun with the same
            settings reads the finished cells from it, so an interrupted run resumes.
        on_cell: called as ``on_cell(done, total, record)`` after each cell (progress bars).
    """

    jobs: int = 1
    cache_dir: str | Path | None = None
    on_cell: Callable[[int, int, dict], None] | None = None


def _owner_checks(options: RunOptions, owner: str) -> int:
    return check_int(options.jobs, "jobs", owner, min_value=1, max_value=256,
                     fix="pass jobs=1 (this process) or the number of cores to use.")


def pending(spec: TrainabilitySpec, options: RunOptions) -> tuple[list, dict]:
    """``(cells to train, {cell: cached record})`` of a checked spec."""
    from ._runner import CellCache

    cache = CellCache(options.cache_dir)
    done, todo = {}, []
    for c in spec.cells():
        rec = cache.get(spec.cell_key(spec.sigma_w2[c[1]], spec.depths[c[0]]))
        if rec is None:
            todo.append(c)
        else:
            done[c] = rec
    return todo, done


def run_spec(spec: TrainabilitySpec, options: RunOptions | None = None, factory=None,
             data=None) -> TrainabilityResult:
    """Run a checked spec (the engine behind :func:`trainability` and :func:`trainability_of`)."""
    from ._cells import load_data
    from ._runner import CellCache, run_cells

    options = options or RunOptions()
    jobs = _owner_checks(options, "trainability")
    t0 = time.perf_counter()
    data = load_data(spec.data) if data is None else data
    cache = CellCache(options.cache_dir)
    todo, records = pending(spec, options)
    cached = len(records)
    total = len(spec.cells())

    def on_cell(c, rec):
        if "error" in rec:
            raise ParameterError("factory", "trainability_of", "a function (depth, scale) -> model that "
                                 "builds and trains at every grid cell", rec["error"],
                                 f"it failed at depth={spec.depths[c[0]]}, scale={spec.sigma_w2[c[1]]:g}.")
        cache.put(spec.cell_key(spec.sigma_w2[c[1]], spec.depths[c[0]]), rec)
        records[c] = rec
        if options.on_cell is not None:
            options.on_cell(len(records), total, rec)

    run_cells(spec, todo, data, jobs=jobs, factory=factory, on_cell=on_cell)
    shape = (len(spec.depths), len(spec.sigma_w2))
    arrays = {k: np.full(shape, np.nan) for k in ("accuracy", "loss_init", "loss_final", "gain")}
    diverged = np.zeros(shape, dtype=bool)
    for (i, j), rec in records.items():
        for k, a in arrays.items():
            a[i, j] = rec[k]
        diverged[i, j] = bool(rec["diverged"])
    curve = fit = None
    if spec.variant != "factory":
        curve = depth_scale_curve(spec.activation, spec.sigma_w2, spec.sigma_b2)
        res0 = TrainabilityResult(spec, arrays["accuracy"], arrays["loss_init"], arrays["loss_final"],
                                  arrays["gain"], diverged)
        fit = fit_depth_multiple(curve.xi_c, spec.depths, res0.trainable)
    return TrainabilityResult(spec, arrays["accuracy"], arrays["loss_init"], arrays["loss_final"],
                              arrays["gain"], diverged, curve=curve, fit=fit,
                              seconds=time.perf_counter() - t0, cached=cached, jobs=jobs)


def make_spec(activation, sigma_w2_grid, depth_grid, **settings) -> TrainabilitySpec:
    """A checked :class:`TrainabilitySpec` for the built-in nets (``activation`` validated)."""
    from ..theory.activations import activation_names
    from ..theory.meanfield import kernel_for
    from ._cells import TORCH_ACTIVATIONS

    owner = "trainability"
    if not isinstance(activation, str):
        raise ParameterError("activation", owner, "an activation name", activation,
                             "pass e.g. activation='tanh'.")
    usable = ", ".join(sorted(n for n in TORCH_ACTIVATIONS if n in activation_names()))
    fix = ("pass one of these names. The experiment builds torch nets from the name, so a function "
           "of your own is not accepted here; for your own model family use "
           "gradhealth.experiments.trainability_of(factory, ...) from Python.")
    try:
        name = kernel_for(activation, owner=owner).name
    except ParameterError:
        name = None
    if name not in TORCH_ACTIVATIONS:
        raise ParameterError("activation", owner, f"one of {usable}", activation, fix)
    spec = TrainabilitySpec(activation=name, sigma_w2=tuple(np.atleast_1d(sigma_w2_grid).tolist())
                            if np.size(sigma_w2_grid) else (), depths=tuple(np.atleast_1d(depth_grid).tolist())
                            if np.size(depth_grid) else (), **settings)
    spec = check_spec(spec, owner)
    if spec.variant == "factory":
        raise ParameterError("variant", owner, "'plain', 'residual' or 'layernorm'", spec.variant,
                             "use trainability_of(factory, ...) for your own model family.")
    return spec


def trainability(activation, sigma_w2_grid, depth_grid, *, sigma_b2: float = 0.05, data: str = "digits",
                 steps: int = 300, width: int = 64, options: RunOptions | None = None,
                 **settings) -> TrainabilityResult:
    """Train a fully connected net per ``(depth, sigma_w2)`` cell; the measured trainable region.

    Each cell is a net of ``depth`` hidden layers of ``width`` units, ``W ~ N(0, sigma_w2 /
    fan_in)``, ``b ~ N(0, sigma_b2)``, trained for ``steps`` SGD steps (lr 0.01, momentum 0.9,
    batch 128, cross-entropy) on ``data`` with one seed for every cell. A cell is *trainable*
    when its final train accuracy is at least ``threshold`` (0.5; chance is 0.1). The result
    carries the mean-field ``xi_c`` curve and the ``k`` that best separates the cells by
    ``depth < k xi_c`` (:func:`gradhealth.theory.trainability.fit_depth_multiple`).

    Args:
        activation: ``"tanh"``, ``"relu"``, ... (any name both the theory and torch know).
        sigma_w2_grid, depth_grid: the grid (sorted here; values distinct, > 0; depths integers).
        sigma_b2, data, steps, width: see above (``data``: ``"digits"`` or ``"blobs"``).
        options: :class:`RunOptions` (processes, cache directory, progress callback).
        **settings: other :class:`~gradhealth.experiments._spec.TrainabilitySpec` fields:
            ``lr``, ``momentum``, ``batch_size``, ``seed``, ``threshold``, ``variant``
            (``"plain"``, ``"residual"``, ``"layernorm"``).

    Raises:
        ParameterError: an empty or bad grid, an unknown activation or setting.
    """
    bad = set(settings) - {"lr", "momentum", "batch_size", "seed", "threshold", "variant"}
    if bad:
        raise ParameterError(sorted(bad)[0], "trainability", "one of lr, momentum, batch_size, seed, "
                             "threshold, variant", sorted(bad)[0], "remove it or check its spelling.")
    spec = make_spec(activation, sigma_w2_grid, depth_grid, sigma_b2=sigma_b2, data=data, steps=steps,
                     width=width, **settings)
    return run_spec(spec, options)


def _factory_key(factory) -> str:
    import hashlib
    import inspect

    name = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', type(factory).__name__)}"
    try:
        src = inspect.getsource(factory)
    except (OSError, TypeError):
        src = ""
    return name + ":" + hashlib.sha256(src.encode()).hexdigest()[:12]


def _check_output(model, data, owner: str) -> None:
    import torch

    rule = "a callable (depth, scale) -> torch.nn.Module mapping (batch, 64) inputs to (batch, 10) logits"
    if not isinstance(model, torch.nn.Module):
        raise ParameterError("factory", owner, rule, f"it returned {type(model).__name__}",
                             "return the model (a torch.nn.Module).")
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(data[0][:4]))
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ParameterError("factory", owner, rule, f"its model raised {type(exc).__name__}: {exc}",
                             "check the model's input size (64) and forward.") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4, 10) or not out.is_floating_point():
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ParameterError("factory", owner, rule, f"output {got} for a batch of 4",
                             "end the model with a Linear(..., 10).")


def _check_factory(factory, spec: TrainabilitySpec, data, jobs: int) -> None:
    import pickle

    import torch

    owner = "trainability_of"
    if not callable(factory):
        raise ParameterError("factory", owner, "a callable (depth, scale) -> torch.nn.Module", factory,
                             "pass e.g. lambda depth, scale: make_mlp(depth, init_gain=scale).")
    try:
        with torch.random.fork_rng(devices=[]):
            model = factory(spec.depths[0], spec.sigma_w2[0])
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ParameterError("factory", owner, "a callable (depth, scale) -> torch.nn.Module",
                             f"{type(exc).__name__}: {exc}",
                             f"it raised at depth={spec.depths[0]}, scale={spec.sigma_w2[0]:g}.") from None
    _check_output(model, data, owner)
    if jobs > 1:
        try:
            pickle.dumps(factory)
        except Exception:  # noqa: BLE001 - pickle raises many types
            raise ParameterError("factory", owner, "picklable (a module-level function) when jobs > 1",
                                 factory, "define it at module level, or pass jobs=1.") from None


def trainability_of(factory, scales, depth_grid, *, data: str = "digits", steps: int = 300,
                    options: RunOptions | None = None, **settings) -> TrainabilityResult:
    """The same experiment for a user's model family: ``factory(depth, scale) -> nn.Module``.

    The model must map a ``(batch, 64)`` float tensor to ``(batch, 10)`` logits (digits). It is
    built under ``torch.manual_seed(seed)`` for every cell (the caller's RNG state is restored)
    and trained as in :func:`trainability`. The plot's x axis is the probe's measured backward
    gain per layer at init (1: the edge of chaos), so architectures and initialisers compare on
    one scale.

    Raises:
        ParameterError: bad grid or settings; a factory that is not callable, raises, returns
            something other than a module with ``(batch, 10)`` floating output, or (``jobs > 1``)
            cannot be pickled.
    """
    options = options or RunOptions()
    jobs = _owner_checks(options, "trainability_of")
    spec = TrainabilitySpec(activation=getattr(factory, "__name__", "factory"),
                            sigma_w2=tuple(np.atleast_1d(scales).tolist()) if np.size(scales) else (),
                            depths=tuple(np.atleast_1d(depth_grid).tolist()) if np.size(depth_grid) else (),
                            data=data, steps=steps, variant="factory", **settings)
    spec = check_spec(spec, "trainability_of")
    from ._cells import load_data

    arrays = load_data(spec.data)
    _check_factory(factory, spec, arrays, jobs)
    spec = replace(spec, factory_key=_factory_key(factory))
    return run_spec(spec, options, factory=factory, data=arrays)
