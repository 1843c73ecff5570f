"""The statistics a detector sees, the detector shape, and the robust helpers they share.

A detector is a pair of pure functions, in the shape of optax's ``GradientTransformation``::

    state = detector.init()
    events, state = detector.update(stats, state)

``stats`` is one :class:`StepStats` (host-side NumPy values of one logged step), ``state``
is whatever the detector needs to remember (a window of past values, which conditions are
active). ``update`` never mutates its inputs: it returns a new state, so a detector can be
replayed, forked or tested on a synthetic sequence of statistics without a model.

The watcher runs the detectors over a few completed steps at a time (see
:func:`update_many`); a detector may carry an ``update_many`` of its own that does the same
as calling ``update`` step after step, for less (one vectorised test over the steps finds
those on which nothing can happen, see :func:`with_quiet`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from .._text import quoted, safe_text
from ..events import Event

__all__ = [
    "LayerTable",
    "StepStats",
    "Detector",
    "chain",
    "update_many",
    "with_quiet",
    "run_detectors",
    "robust_center_scale",
    "theil_sen_slope",
    "theil_sen_slope_uniform",
    "median",
    "safe_text",
    "quoted",
    "MAD_TO_SIGMA",
]

#: ``1.4826 * MAD`` estimates the standard deviation of a Gaussian sample.
MAD_TO_SIGMA = 1.4826

@dataclass(frozen=True)
class LayerTable:
    """The layers of a watched model, in a fixed index order.

    Attributes:
        names: qualified module names (``""`` is the root module).
        types: module class names.
        roles: ``"weight"`` (Linear, Conv, RNN, attention: layers whose output gradient forms
            the backward signal), ``"recurrent"`` (RNN/LSTM/GRU and their cells, also weight
            layers), ``"norm"``, ``"embedding"``, ``"activation"`` (parameter-free
            nonlinearities), ``"other"``.
        families: for activation layers, ``"relu"`` (dead units are exact zeros),
            ``"saturating"`` (tanh, sigmoid, hardtanh, ...) or ``"smooth"``; ``""`` otherwise.
        activations: activation name for activation layers (``"tanh"``), ``""`` otherwise.
        depth: position of each layer in the forward execution order (0 = first executed),
            ``-1`` where the layer has not been seen running yet.
        n_params: parameters owned directly by each layer.
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    roles: tuple[str, ...]
    families: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()
    depth: tuple[int, ...] = ()
    n_params: tuple[int, ...] = ()

    def __post_init__(self):
        n = len(self.names)
        if not self.families:
            object.__setattr__(self, "families", ("",) * n)
        if not self.activations:
            object.__setattr__(self, "activations", ("",) * n)
        if not self.depth:
            object.__setattr__(self, "depth", tuple(range(n)))
        if not self.n_params:
            object.__setattr__(self, "n_params", (0,) * n)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def simple(cls, n: int, role: str = "weight", prefix: str = "layers.") -> "LayerTable":
        """``n`` weight layers named ``layers.0 .. layers.{n-1}`` in depth order (for tests)."""
        return cls(tuple(f"{prefix}{i}" for i in range(n)), ("Linear",) * n, (role,) * n)

    def forward_order(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Indices of the layers (optionally only where ``mask``) sorted by forward depth;
        layers never seen running come last in index order."""
        idx = np.arange(len(self.names)) if mask is None else np.flatnonzero(mask)
        d = np.asarray(self.depth, dtype=np.int64)[idx] if len(idx) else np.zeros(0, np.int64)
        key = np.where(d < 0, np.iinfo(np.int64).max, d)
        return idx[np.argsort(key, kind="stable")]

    def is_weight(self) -> np.ndarray:
        """Mask of the weight layers (roles ``"weight"`` and ``"recurrent"``); read-only, computed
        once per table (the table is immutable, and detectors ask for it on every step)."""
        return self._weight

    @functools.cached_property
    def _weight(self) -> np.ndarray:
        return _readonly(np.array([r in ("weight", "recurrent") for r in self.roles], dtype=bool))

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Layer name -> its index in the table, computed once per table."""
        return {name: i for i, name in enumerate(self.names)}

    @functools.cached_property
    def weight_order(self) -> np.ndarray:
        """``forward_order(is_weight())``, computed once per table (read-only)."""
        return _readonly(self.forward_order(self._weight))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


@dataclass(frozen=True)
class StepStats:
    """Host-side statistics of one logged step (what every detector receives).

    Per-layer arrays have one entry per layer of :attr:`layers`; NaN means *not measured at
    this step* (a layer without gradient, a statistic off schedule), except where the
    matching non-finite count says the value itself was NaN. Use :meth:`empty` to build one.

    Attributes:
        step: training step (0-based).
        layers: the :class:`LayerTable`.
        loss: the observed loss, or None.
        global_grad_norm: 2-norm of all gradients before clipping (NaN if not measured).
        global_grad_norm_clipped: the same after the user's clipping (what the optimizer
            applied); NaN when no clipping was detected.
        lr: learning rate of the first parameter group, or None.
        skipped: the optimizer step was not applied (guard, or AMP GradScaler).
        skip_reason: ``"guard"``, ``"scaler"``, ``"rollback"`` or None.
        grad_norm: per-layer gradient 2-norm (before clipping).
        param_norm: per-layer parameter 2-norm (before the step).
        update_ratio: per-layer ``||W_after - W_before|| / ||W_before||``.
        nonfinite_grad / nonfinite_param: per-layer counts of NaN/Inf entries (-1: not measured).
        out_grad_norm: per-layer 2-norm of the gradient w.r.t. the layer's output (the
            backward signal), summed in quadrature over calls and micro-batches.
        out_grad_rms: the same divided by ``sqrt(number of output entries)``.
        act_std, dead_frac, sat_frac: forward statistics of each layer's output.
        time_grad: for recurrent layers, the gradient norm reaching each time step
            (index 0 = first time step).
        loss_nonfinite: the observed loss was NaN/Inf.
        origin: what forensic replay found for this step (dict with ``module``,
            ``direction``, ...), or None.
        full: the costlier statistics (parameter norms, update ratios, output gradients,
            forward statistics) were scheduled at this step.
        info: model facts for prescriptions (``activation``, ``has_norm``, ...).
    """

    step: int
    layers: LayerTable
    loss: float | None = None
    global_grad_norm: float = math.nan
    global_grad_norm_clipped: float = math.nan
    lr: float | None = None
    skipped: bool = False
    skip_reason: str | None = None
    grad_norm: np.ndarray = None  # type: ignore[assignment]
    param_norm: np.ndarray = None  # type: ignore[assignment]
    update_ratio: np.ndarray = None  # type: ignore[assignment]
    nonfinite_grad: np.ndarray = None  # type: ignore[assignment]
    nonfinite_param: np.ndarray = None  # type: ignore[assignment]
    out_grad_norm: np.ndarray = None  # type: ignore[assignment]
    out_grad_rms: np.ndarray = None  # type: ignore[assignment]
    act_std: np.ndarray = None  # type: ignore[assignment]
    dead_frac: np.ndarray = None  # type: ignore[assignment]
    sat_frac: np.ndarray = None  # type: ignore[assignment]
    time_grad: Mapping[str, np.ndarray] = field(default_factory=dict)
    loss_nonfinite: bool = False
    origin: Mapping[str, Any] | None = None
    full: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.layers)
        for name in ("grad_norm", "param_norm", "update_ratio", "out_grad_norm", "out_grad_rms",
                     "act_std", "dead_frac", "sat_frac"):
            v = getattr(self, name)
            a = _nan(n) if v is None else np.asarray(v, dtype=float)
            if a is not v:
                object.__setattr__(self, name, a)
        for name in ("nonfinite_grad", "nonfinite_param"):
            v = getattr(self, name)
            a = np.full(n, -1, dtype=np.int64) if v is None else np.asarray(v, dtype=np.int64)
            if a is not v:
                object.__setattr__(self, name, a)
        if self.loss is not None and not self.loss_nonfinite and not math.isfinite(self.loss):
            object.__setattr__(self, "loss_nonfinite", True)

    @classmethod
    def empty(cls, step: int, layers: LayerTable, **kw) -> "StepStats":
        """Statistics with nothing measured, plus whatever ``kw`` sets."""
        return cls(step=step, layers=layers, **kw)

    def replace(self, **kw) -> "StepStats":
        return replace(self, **kw)


class Detector(NamedTuple):
    """A pure detector: ``init() -> state`` and ``update(stats, state) -> (events, state)``.

    ``update_many(stats_seq, state) -> (events of each step, state)``, when given, is a faster
    equivalent of ``update`` applied to each step in turn (:func:`update_many` calls it);
    None: the loop itself."""

    init: Callable[[], Any]
    update: Callable[[StepStats, Any], tuple[list[Event], Any]]
    name: str = "detector"
    update_many: Callable[[Sequence[StepStats], Any], tuple[list[list[Event]], Any]] | None = None


def _loop(update: Callable, stats_seq: Sequence[StepStats], state: Any) -> tuple[list[list[Event]], Any]:
    out = []
    for s in stats_seq:
        ev, state = update(s, state)
        out.append(ev)
    return out, state


def update_many(detector: Detector, stats_seq: Sequence[StepStats], state: Any) -> tuple[list[list[Event]], Any]:
    """``detector.update`` over ``stats_seq`` in order, from ``state``: the events of each step
    (one list per step) and the final state. Uses the detector's own ``update_many`` when it
    has one (the same result, for less)."""
    many = getattr(detector, "update_many", None)
    return many(stats_seq, state) if many is not None else _loop(detector.update, stats_seq, state)


def with_quiet(detector: Detector, quiet: Callable[[Sequence[StepStats]], np.ndarray],
               state_ok: Callable[[Any], bool] | None = None) -> Detector:
    """``detector`` with an ``update_many`` that skips its quiet steps.

    ``quiet(stats_seq)`` marks (vectorised over the steps) those on which ``update`` returns no
    event and the state unchanged whatever the state -- or, with ``state_ok``, whatever a state
    for which ``state_ok(state)`` holds. ``update`` runs on every other step, in order. The
    property test of each detector checks the two against each other
    (``tests/detectors/test_update_many.py``)."""
    update = detector.update

    def many(stats_seq: Sequence[StepStats], state: Any) -> tuple[list[list[Event]], Any]:
        q = quiet(stats_seq) if stats_seq else ()
        out: list[list[Event]] = []
        for s, qi in zip(stats_seq, q):
            if qi and (state_ok is None or state_ok(state)):
                out.append([])
            else:
                ev, state = update(s, state)
                out.append(ev)
        return out, state

    return detector._replace(update_many=many)


def same_table_rows(stats_seq: Sequence[StepStats], field_name: str) -> np.ndarray | None:
    """The ``field_name`` arrays of ``stats_seq`` stacked into one ``(steps, layers)`` array, or
    None when the steps do not share one layer table (a structure change inside the batch)."""
    t = stats_seq[0].layers
    if any(s.layers is not t for s in stats_seq):
        return None
    return np.array([getattr(s, field_name) for s in stats_seq])   # (np.stack: the same, slower)


@dataclass(frozen=True)
class _Failed:
    """The state of a chained detector whose last update raised: its state before that."""

    state: Any


def chain(*detectors: Detector, name: str = "chain") -> Detector:
    """Compose detectors into one; events come out in the order of ``detectors``.

    The composite state is a tuple of the member states (like ``optax.chain``). Members are
    isolated: one that raises keeps its previous state, the others run as usual, and the
    chain emits one ``internal`` event when a member starts failing (not on every step); a
    member that works again simply carries on.
    """
    dets = tuple(detectors)

    def init():
        return tuple(d.init() for d in dets)

    def update(stats: StepStats, state):
        events: list[Event] = []
        new: list[Any] = []
        for d, s in zip(dets, state):
            ev, s2 = _member(d, stats, s)
            events.extend(ev)
            new.append(s2)
        return events, tuple(new)

    def many(stats_seq: Sequence[StepStats], state):
        per_step: list[list[Event]] = [[] for _ in stats_seq]
        new: list[Any] = []
        for d, s in zip(dets, state):
            try:
                evs, s2 = update_many(d, stats_seq, s.state if isinstance(s, _Failed) else s)
            except Exception:   # where it fails and from which step on: one step at a time
                evs = []
                for st in stats_seq:
                    ev, s = _member(d, st, s)
                    evs.append(ev)
                s2 = s
            for acc, ev in zip(per_step, evs):
                acc.extend(ev)
            new.append(s2)
        return per_step, tuple(new)

    return Detector(init, update, name, many)


def _member(d: Detector, stats: StepStats, s: Any) -> tuple[list[Event], Any]:
    """One chained detector on one step, isolated (see :func:`chain`)."""
    prev = s.state if isinstance(s, _Failed) else s
    try:
        return d.update(stats, prev)
    except Exception as exc:
        events = []
        if not isinstance(s, _Failed):
            events.append(Event(
                step=stats.step, kind="internal", layer=None, severity="warning",
                message=(f"gradhealth's detector {quoted(d.name)} failed at step {stats.step} "
                         f"({type(exc).__name__}: {safe_text(exc)}); the other detectors go on, "
                         "but its events are missing while it fails."),
                evidence={"site": "detector", "detector": d.name,
                          "error": f"{type(exc).__name__}: {exc}"[:500]}))
        return events, _Failed(prev)


def run_detectors(detector: Detector, stats_seq: Sequence[StepStats]) -> list[Event]:
    """Feed a sequence of statistics through ``detector`` from its initial state (tests,
    offline analysis of a stored run)."""
    state = detector.init()
    out: list[Event] = []
    for s in stats_seq:
        ev, state = detector.update(s, state)
        out.extend(ev)
    return out


def robust_center_scale(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Median and ``1.4826 * MAD`` of the finite entries of ``values`` (NaN, NaN if none).

    The median absolute deviation is robust to the very spikes a detector looks for: one
    outlier in a window moves neither statistic (Hampel 1974; Leys et al. 2013).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    med = median(v)
    return med, MAD_TO_SIGMA * median(np.abs(v - med))


def median(v: np.ndarray) -> float:
    """``float(np.median(v))`` of a non-empty 1-D array without NaN, by one sort: the middle
    entry, or the mean of the two middle ones, as NumPy takes it (``(a + b) / 2``), so the
    value is the same to the bit; on the short windows of the detectors several times cheaper
    than ``np.median``, whose fixed overhead dominates there."""
    s = np.sort(v)
    n = s.size
    h = n // 2
    return float(s[h]) if n % 2 else float((s[h - 1] + s[h]) / 2)


def theil_sen_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Median of the pairwise slopes ``(y_j - y_i) / (x_j - x_i)`` (Theil 1950, Sen 1968).

    A straight-line trend that ignores up to ~29% outlying points: the jump of the output
    layer's gradient (a different width, the loss's own scale) does not bend the depth trend.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    n = xa.size
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, k=1)
    dx = xa[j] - xa[i]
    ok = dx != 0
    if not ok.any():
        return math.nan
    return float(np.median((ya[j] - ya[i])[ok] / dx[ok]))


@functools.lru_cache(maxsize=64)
def pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index pairs ``i < j`` of ``n`` points and their spacing ``j - i`` (as float)."""
    i, j = np.triu_indices(n, k=1)
    return _readonly(i), _readonly(j), _readonly((j - i).astype(float))


def theil_sen_slope_uniform(y: np.ndarray) -> float:
    """:func:`theil_sen_slope` of ``y`` at ``x = 0, 1, ..., n - 1`` (evenly spaced points, the
    depth trend's case): the same pairs in the same order and the same divisions, so the same
    value to the bit, without rebuilding the pair indices on every call."""
    ya = np.asarray(y, dtype=float)
    n = ya.size
    if n < 2:
        return math.nan
    i, j, dx = pairs(n)
    return float(np.median((ya[j] - ya[i]) / dx))
