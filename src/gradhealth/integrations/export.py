"""Export a stored run to TensorBoard or MLflow: :func:`to_tensorboard`, :func:`to_mlflow`.

Both read the run through :func:`gradhealth.store.load_run` (finished, crashed or still being
written) and write the same content, laid out by :func:`build_export`; :func:`follow_tensorboard`
keeps a TensorBoard export up to date while the run trains:

- **scalars**: ``loss``, ``global/<column>`` for each ``steps`` column (``global_grad_norm``,
  ``global_grad_norm_clipped``, ``lr``, ``skipped``, ``nonfinite_count``) and
  ``layer/<layer>/<statistic>`` for each ``layer_stats`` column (``grad_norm``, ``param_norm``,
  ``update_ratio``, ``nonfinite``, ``out_grad_norm``, ``act_std``, ``dead_frac``, ``sat_frac``).
  A value the run never recorded is not written; a recorded NaN/Inf is never dropped (below).
- **histograms** ``hist/<statistic>``: at each step, the distribution of one per-layer statistic
  over the layers, of its **finite** values only, with ``hist/<statistic>/nan``, ``/posinf``,
  ``/neginf`` and ``/zero`` counts as separate scalars at every step. TensorBoard's own
  ``add_histogram`` silently leaves NaN/Inf out of the buckets and raises "The histogram is
  empty" when nothing finite is left; here a step with no finite value gets its counts and no
  histogram, never an exception.
- **events** as text (tag ``events``, which TensorBoard files as ``events/text_summary``: one
  Markdown list per step) and ``events/<kind>`` (the
  running count of that kind) as scalars.

Names are user data: every tag and metric name passes through :func:`metric_name` (the
characters MLflow allows, ``[A-Za-z0-9_\\-./ ]``, a ``/``-separated path without empty, ``.``
or ``..`` parts), layers whose names collide after that get their index appended, and
every text passes through :func:`gradhealth._text.safe_text` (and a Markdown escape for
TensorBoard's text plugin).

Non-finite values. TensorBoard stores scalars as float32 and shows NaN/Inf as they are, so the
raw value is written; a finite value beyond float32's range would read back as Inf there, so
such values are also counted per step in ``tensorboard/float32_overflow``. MLflow stores an
infinity as the largest float (and a chart cannot show NaN), so :func:`to_mlflow` writes only
finite values as metric points, counts the non-finite ones per step in ``nonfinite/nan``,
``nonfinite/posinf`` and ``nonfinite/neginf`` (every step, zeros included), and keeps the raw
values in a tag per series, ``nonfinite/<series>`` = ``"step 7: nan; step 8: inf"``. MLflow has
no histograms: ``hist/<statistic>/min``, ``/median`` and ``/max`` of the finite values stand in.

Which TensorBoard writer. ``tensorboardX`` (``pip install 'gradhealth[tensorboard]'``): it
needs only numpy, protobuf and packaging (about 4 s to install here), is maintained, and writes
the event files TensorBoard reads. ``torch.utils.tensorboard.SummaryWriter`` would need the
whole ``tensorboard`` package (the server, grpcio, werkzeug, markdown, ...) just to write files.
For MLflow, ``mlflow-skinny`` (``pip install 'gradhealth[mlflow]'``) has the tracking client and
the file store (``tracking_uri="file:///path/mlruns"``) without the server's dependencies (no
SQLAlchemy, so no ``sqlite:///`` store: use the full ``mlflow`` for that). MLflow 3.7 and later
refuse the file store unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set; a tracking server's
``http://`` URI needs nothing.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .._text import safe_text

__all__ = ["to_tensorboard", "follow_tensorboard", "to_mlflow", "build_export", "Export", "metric_name",
           "TENSORBOARD_FIX", "MLFLOW_FIX"]

TENSORBOARD_FIX = "pip install 'gradhealth[tensorboard]' (or pip install tensorboardX)"
MLFLOW_FIX = "pip install 'gradhealth[mlflow]' (or pip install mlflow-skinny)"

#: The ``steps`` columns exported as scalars (``time`` becomes the wall time instead).
STEP_SCALARS = ("loss", "global_grad_norm", "global_grad_norm_clipped", "lr", "skipped", "nonfinite_count")
#: Per-layer statistics whose distribution over layers is exported as a histogram.
HIST_FIELDS = ("grad_norm", "param_norm", "update_ratio", "out_grad_norm", "act_std", "dead_frac", "sat_frac")
#: The count scalars written next to each histogram.
COUNT_NAMES = ("nan", "posinf", "neginf", "zero")

_FLOAT32_MAX = 3.4028234663852886e38
_DISALLOWED = re.compile(r"[^A-Za-z0-9_\-. ]")   # inside one path part ("/" separates parts)
_MAX_NAME = 240                                    # MLflow's limit is 250 characters
_MAX_TAG_VALUE = 4000                              # MLflow's is 5000 (older) or 8000
_MARKDOWN = re.compile(r"([\\`*_\[\]#|<>~])")    # what Markdown would read as markup inside a list item


def _part(text) -> str:
    s = _DISALLOWED.sub("_", safe_text(text)).strip()
    return "_" if s in ("", ".", "..") else s


def metric_name(*parts) -> str:
    """A tag / metric name both MLflow and TensorBoard accept, built from ``parts``.

    Each part is made safe (:func:`~gradhealth._text.safe_text`, then every character outside
    ``[A-Za-z0-9_\\-. ]`` -- a ``/`` included -- becomes ``_``; an empty, ``.`` or ``..`` part
    becomes ``_``), the parts are joined with ``/``, and the result is cut to 240 characters.

    >>> metric_name("layer", "enc/0\\x1b[2J", "grad_norm")
    'layer/enc_0_x1b_2J/grad_norm'
    >>> metric_name("layer", "", "grad_norm")
    'layer/_/grad_norm'
    """
    return "/".join(_part(p) for p in parts)[:_MAX_NAME]


def _layer_parts(layers: list[dict]) -> dict[int, str]:
    """Layer index -> its name as one safe path part, unique (index appended on a collision)."""
    safe = {d["index"]: _part(d["name"] if d["name"] != "" else "(root)") for d in layers}
    seen: dict[str, int] = defaultdict(int)
    for s in safe.values():
        seen[s] += 1
    return {i: (s if seen[s] == 1 else f"{s}_{i}") for i, s in safe.items()}


def _kind(v: float) -> str | None:
    """``"nan"``, ``"posinf"``, ``"neginf"`` for a non-finite float, else None."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "posinf" if v > 0 else "neginf"
    return None


@dataclass
class Export:
    """What an export writes, as plain data (built by :func:`build_export`).

    Attributes:
        scalars: ``(tag, step, value)``; values as recorded (NaN/Inf kept).
        histograms: ``(tag, step, finite_values)``; only steps with at least one finite value.
        texts: ``(tag, step, text)``; text already passed through ``safe_text``.
        walltime: step -> Unix time of the step (the run's ``created_at`` + the step's ``time``).
        meta: the run's metadata, as safe single-line strings.
    """

    scalars: list[tuple[str, int, float]] = field(default_factory=list)
    histograms: list[tuple[str, int, list[float]]] = field(default_factory=list)
    texts: list[tuple[str, int, str]] = field(default_factory=list)
    walltime: dict[int, float] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _event_line(e) -> str:
    where = f" at {safe_text(e.layer)}" if e.layer else ""
    since = f" (since step {e.since})" if e.since is not None and e.since != e.step else ""
    fix = f" Fix: {safe_text(e.remedy)}" if e.remedy else ""
    return f"[{safe_text(e.severity)}] {safe_text(e.kind)}{where}{since}: {safe_text(e.message)}{fix}"


def _histogram(out: Export, col: str, step: int, values: list[float]) -> None:
    """The finite values of one statistic at one step as a histogram, the rest as counts."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    finite = []
    for v in values:
        k = _kind(v)
        if k is None:
            finite.append(v)
            counts["zero"] += v == 0.0
        else:
            counts[k] += 1
    for k in COUNT_NAMES:
        out.scalars.append((f"hist/{col}/{k}", step, float(counts[k])))
    if finite:
        out.histograms.append((f"hist/{col}", step, finite))


def build_export(run) -> Export:
    """Lay out a loaded :class:`~gradhealth.store.Run` as scalars, histograms and texts.

    This is the part both writers share; see the module docstring for the names.
    """
    out = Export(meta={safe_text(k): safe_text(v) for k, v in run.meta.items()})
    t0 = run.meta.get("created_at")   # the steps' ``time`` is in seconds since the run started
    t0 = float(t0) if isinstance(t0, (int, float)) and math.isfinite(t0) else None
    for row in run.steps:
        t = row.get("time")
        if t0 is not None and t is not None and math.isfinite(t):
            out.walltime[row["step"]] = t0 + float(t)
        for col in STEP_SCALARS:
            if row.get(col) is not None:
                out.scalars.append(("loss" if col == "loss" else f"global/{col}", row["step"], float(row[col])))
    parts = _layer_parts(run.layers)
    per_step: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in run.layer_stats:
        lname = parts.get(row["layer"], f"layer{row['layer']}")
        for col, value in row.items():
            if col in ("step", "layer") or value is None:
                continue
            out.scalars.append((metric_name("layer", lname, col), row["step"], float(value)))
            if col in HIST_FIELDS:
                per_step[(col, row["step"])].append(float(value))
    for (col, step), values in sorted(per_step.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        _histogram(out, col, step, values)
    by_step: dict[int, list[str]] = defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)
    for e in run.events:
        step = e.step if e.step is not None else 0
        kinds[e.kind] += 1
        out.scalars.append((metric_name("events", e.kind), step, float(kinds[e.kind])))
        by_step[step].append(_event_line(e))
    for step in sorted(by_step):
        out.texts.append(("events", step, "\n".join(by_step[step])))
    return out


def _load(run_dir):
    from ..store import load_run

    return load_run(run_dir)


# -- TensorBoard ------------------------------------------------------------------------------

def _markdown(text: str) -> str:
    """Plain text for TensorBoard's Markdown text plugin: one list item per line, escaped."""
    return "\n".join("- " + _MARKDOWN.sub(r"\\\1", line) for line in text.split("\n"))


def _tb_writer(logdir):
    """``(logdir as a Path, tensorboardX SummaryWriter)``; ImportError naming the fix."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"gradhealth's TensorBoard export needs tensorboardX, which is not installed. "
                          f"Fix: {TENSORBOARD_FIX}.") from None
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:   # under a file, unwritable, a blank path
        from ..errors import ParameterError

        raise ParameterError("logdir", "gradhealth export", "a directory that can be created or written",
                             str(logdir), f"pass --logdir a writable directory ({exc.strerror or exc})."
                             ) from None
    return logdir, SummaryWriter(logdir=str(logdir))


class _quiet_x2num:
    """tensorboardX logs "NaN or Inf found in input tensor." for every such scalar: here they are
    written on purpose (and counted), so its logger is quietened while the export runs."""

    def __enter__(self):
        self.log = logging.getLogger("tensorboardX.x2num")
        self.level = self.log.level
        self.log.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.log.setLevel(self.level)


def _write_tb(writer, exp: Export, keep=lambda step: True, events: bool = True, meta: bool = True) -> None:
    """Write the parts of ``exp`` whose step passes ``keep`` (the events' scalars and texts
    only with ``events``, the run's metadata only with ``meta``)."""
    import numpy as np

    overflow: dict[int, int] = defaultdict(int)
    for tag, step, value in exp.scalars:
        if not keep(step) or (not events and tag.startswith("events/")):
            continue
        if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            overflow[step] += 1
        writer.add_scalar(tag, value, step, walltime=exp.walltime.get(step))
    for step, n in sorted(overflow.items()):
        writer.add_scalar("tensorboard/float32_overflow", float(n), step, walltime=exp.walltime.get(step))
    for tag, step, values in exp.histograms:
        if keep(step):   # finite by construction; float64 so that values beyond float32 keep their buckets
            writer.add_histogram(tag, np.asarray(values, dtype=np.float64), step, walltime=exp.walltime.get(step))
    for tag, step, text in exp.texts if events else ():
        if keep(step):
            writer.add_text(tag, _markdown(text), step, walltime=exp.walltime.get(step))
    if meta and exp.meta:
        writer.add_text("meta", _markdown("\n".join(f"{k}: {v}" for k, v in sorted(exp.meta.items()))), 0)


def to_tensorboard(run_dir: str | os.PathLike, logdir: str | os.PathLike) -> Path:
    """Write the run in ``run_dir`` as TensorBoard event files under ``logdir``.

    Args:
        run_dir: a gradhealth run directory (holds ``run.sqlite``).
        logdir: where the event files go (created; point ``tensorboard --logdir`` at it).

    Returns:
        ``logdir`` as a Path.

    Raises:
        ImportError: tensorboardX is not installed (the message names the install command).
        StoreError: ``run_dir`` is not a readable gradhealth run.
    """
    exp = build_export(_load(run_dir))   # (first: nothing is created for what is not a run)
    logdir, writer = _tb_writer(logdir)
    try:
        with _quiet_x2num():
            _write_tb(writer, exp)
    finally:
        writer.close()
    return logdir


def follow_tensorboard(run_dir: str | os.PathLike, logdir: str | os.PathLike, *, interval: float = 2.0,
                       stop=None) -> Path:
    """Export a run that is still training, and keep exporting as its store grows, until the run
    is finished (its store closed) or ``stop()`` returns True: the live writer.

    It reads the run store from its own process (SQLite WAL: the training is not slowed or
    touched) every ``interval`` seconds, only the steps after those it already wrote
    (``load_run(after_step=...)``), and appends what is new: the steps up to the newest
    complete one (the newest step may still be being written), and every new event. The result
    is what :func:`to_tensorboard` writes for the finished run (events as one text per event
    instead of one per step). A store that does not exist yet is waited for.

    Args:
        run_dir: the run directory of the training (it may not exist yet).
        logdir: where the event files go (created).
        interval: seconds between reads (> 0).
        stop: a callable checked after each read; True ends the export (e.g. on Ctrl-C).

    Returns:
        ``logdir`` as a Path.

    Raises:
        ImportError: tensorboardX is not installed.
        ParameterError: ``interval`` is not a positive number.
    """
    import time

    from .._checks import check_real
    from ..errors import StoreError
    from ..store import load_run

    interval = check_real(interval, "interval", "follow_tensorboard", low=0.0, low_inclusive=False,
                          fix="pass the seconds between reads of the store, e.g. interval=2.0.")
    logdir, writer = _tb_writer(logdir)
    done, n_events, kinds, meta = -1, 0, defaultdict(int), True
    try:
        with _quiet_x2num():
            while True:
                try:
                    run = load_run(run_dir, after_step=done)   # only what is new (done = -1: all)
                except StoreError:
                    run = None          # not created yet (or being created): read again later
                if run is not None:
                    last = max((r["step"] for r in run.steps), default=done)
                    upto = last if run.finished else last - 1
                    lo = done
                    _write_tb(writer, build_export(run), keep=lambda s, lo=lo, hi=upto: lo < s <= hi,
                              events=False, meta=meta)
                    meta = False
                    for e in run.events[n_events:]:
                        step = e.step if e.step is not None else 0
                        kinds[e.kind] += 1
                        writer.add_scalar(metric_name("events", e.kind), float(kinds[e.kind]), step)
                        writer.add_text("events", _markdown(_event_line(e)), step)
                    n_events, done = len(run.events), max(done, upto)
                    writer.flush()
                    if run.finished:
                        break
                if stop is not None and stop():
                    break
                time.sleep(interval)
    finally:
        writer.close()
    return logdir


# -- MLflow -----------------------------------------------------------------------------------

def _nonfinite_tags(exp: Export) -> tuple[dict[str, str], dict[int, dict[str, int]]]:
    raw: dict[str, list[str]] = defaultdict(list)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: {"nan": 0, "posinf": 0, "neginf": 0})
    for tag, step, value in exp.scalars:
        counts[step]   # every step gets its counts, zeros included
        k = _kind(value)
        if k is not None:
            counts[step][k] += 1
            raw[tag].append(f"step {step}: {value}")
    tags = {}
    for tag, items in raw.items():
        text = "; ".join(items)
        if len(text) > _MAX_TAG_VALUE:
            text = text[:_MAX_TAG_VALUE - 40].rsplit(";", 1)[0] + f"; ... ({len(items)} non-finite values in all)"
        tags[metric_name("nonfinite", *tag.split("/"))] = text
    return tags, counts


def to_mlflow(run_dir: str | os.PathLike, tracking_uri: str | None = None, experiment: str = "gradhealth",
              run_name: str | None = None) -> str:
    """Log the run in ``run_dir`` to MLflow as one MLflow run; returns its run id.

    Args:
        run_dir: a gradhealth run directory (holds ``run.sqlite``).
        tracking_uri: e.g. ``"file:///tmp/mlruns"`` or a server's URL; None: MLflow's default
            (``MLFLOW_TRACKING_URI``).
        experiment: the experiment's name (created when missing).
        run_name: the MLflow run's name; default: the run directory's name.

    Raises:
        ImportError: mlflow is not installed (the message names the install command).
        StoreError: ``run_dir`` is not a readable gradhealth run.
    """
    try:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError(f"gradhealth's MLflow export needs mlflow, which is not installed. "
                          f"Fix: {MLFLOW_FIX}.") from None

    run = _load(run_dir)
    exp = build_export(run)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    name = safe_text(run_name if run_name is not None else Path(run.run_dir).resolve().name)
    mrun = client.create_run(exp_id, run_name=name)
    run_id = mrun.info.run_id

    def ms(step: int) -> int:
        return int(1000 * exp.walltime.get(step, 0.0))

    nf_tags, nf_counts = _nonfinite_tags(exp)
    metrics = [Metric(tag, value, ms(step), step) for tag, step, value in exp.scalars if math.isfinite(value)]
    for step, c in sorted(nf_counts.items()):
        metrics.extend(Metric(f"nonfinite/{k}", float(n), ms(step), step) for k, n in c.items())
    for tag, step, values in exp.histograms:
        values = sorted(values)
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
        metrics.extend(Metric(f"{tag}/{k}", v, ms(step), step)
                       for k, v in (("min", values[0]), ("median", median), ("max", values[-1])))
    tags = {"gradhealth.run_dir": safe_text(run.run_dir)[:_MAX_TAG_VALUE],
            "gradhealth.finished": str(run.finished)}
    tags.update({metric_name("gradhealth.meta", k): v[:_MAX_TAG_VALUE] for k, v in exp.meta.items()})
    tags.update(nf_tags)
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(metrics), 1000):       # MLflow's limits of one batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for i in range(0, len(tag_list), 100):
        client.log_batch(run_id, tags=tag_list[i:i + 100])
    events = "\n".join(f"step {step}:\n" + text for _, step, text in exp.texts)
    client.log_text(run_id, events or "(no events)\n", "gradhealth/events.txt")
    client.set_terminated(run_id, "FINISHED")
    return run_id
