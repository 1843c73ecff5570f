"""The watcher's ``on_nonfinite`` policies: raise, warn, skip, rollback.

``"skip"``, ``"rollback"`` and ``"raise"`` act through one mechanism,
:class:`gradhealth.remedies.StepGuard` (the optax ``apply_if_finite`` of gradhealth): it checks
the gradients before every optimizer step (one device-to-host sync per step) and does not run
the optimizer at all on a non-finite step, so parameters and optimizer state stay bitwise
unchanged. The watcher turns each of its callbacks into an action and an Event:

* ``skip``: the step is skipped; after ``max_consecutive_skips`` skips in a row the next
  non-finite step raises :class:`~gradhealth.errors.NonFiniteError`.
* ``rollback``: the step is skipped, the last known-good parameters and optimizer state are
  restored (a snapshot taken every ``rollback_every`` good steps, in memory or in the run
  directory), and the learning rate is multiplied by ``rollback_lr_factor``.
* ``raise``: the first non-finite step raises :class:`~gradhealth.errors.NonFiniteError`
  carrying the replay's diagnosis (the step is not applied).
* ``warn``: no guard; the step is applied. The watcher warns (with the diagnosis) when its
  statistics show non-finite gradients, i.e. on logged steps only, with no extra sync.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._text import quoted
from ..events import Event
from ..remedies.guards import OVERFLOW_NORM
from ._compile import eager_stance, named_buffers, unwrap
from ._ranks import ddp_world, merge_across_ranks
from ._state import changed
from .replay import ReplayReport, input_check, replay_forward_lockstep, replay_step

__all__ = ["POLICIES", "NonFinitePolicy", "BufferSnapshot", "Snapshot", "take_snapshot", "restore_snapshot", "scale_lr",
           "diagnosis_text"]

POLICIES = ("warn", "skip", "rollback", "raise")


class Snapshot:
    """Parameters and optimizer states at one step (the rollback target)."""

    def __init__(self, step: int, params: list[torch.Tensor] | None, opt_states: list[dict] | None,
                 path: Path | None = None):
        self.step = step
        self.params = params
        self.opt_states = opt_states
        self.path = path

    def load(self) -> tuple[list[torch.Tensor], list[dict]]:
        if self.path is not None:
            # weights_only: the run directory is data; a crafted rollback.pt must not run code
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            return data["params"], data["opt_states"]
        return self.params, self.opt_states  # type: ignore[return-value]


def take_snapshot(step: int, params: list[torch.Tensor], optimizers: list[Any],
                  directory: Path | None = None) -> Snapshot:
    """Copy ``params`` and every optimizer's ``state_dict`` (tensors cloned).

    With ``directory``, the copy is written to ``directory/rollback.pt`` (atomically: a
    temporary file renamed over the old one) and nothing stays in memory.
    """
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
    states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    if directory is None:
        return Snapshot(step, saved, states)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rollback.pt"
    tmp = directory / "rollback.pt.tmp"
    torch.save({"step": step, "params": [s.cpu() for s in saved], "opt_states": states}, tmp)
    os.replace(tmp, path)
    return Snapshot(step, None, None, path)


def restore_snapshot(snap: Snapshot, params: list[torch.Tensor], optimizers: list[Any]) -> None:
    """Copy the snapshot back into ``params`` and the optimizers (keeping each group's
    current learning rate: a scheduler may have moved it since the snapshot)."""
    saved, states = snap.load()
    with torch.no_grad():
        for p, s in zip(params, saved):
            if p.shape == s.shape:
                p.copy_(s.to(device=p.device, dtype=p.dtype))
    for opt, st in zip(optimizers, states):
        lrs = [g.get("lr") for g in opt.param_groups]
        opt.load_state_dict(st)
        for g, lr in zip(opt.param_groups, lrs):
            if lr is not None:
                g["lr"] = lr


def scale_lr(optimizers: list[Any], factor: float) -> list[tuple[float, float]]:
    """Multiply every group's learning rate by ``factor``; returns ``(before, after)`` pairs."""
    out = []
    for opt in optimizers:
        for g in opt.param_groups:
            lr = g.get("lr")
            if lr is None:
                continue
            before = float(lr)
            if isinstance(lr, torch.Tensor):
                lr.mul_(factor)
                after = float(lr)
            else:
                after = before * factor
                g["lr"] = after
            out.append((before, after))
    return out


class BufferSnapshot:
    """The model's buffers as they were before the current iteration's first forward.

    A NaN batch poisons BatchNorm's running statistics in the forward pass, before any guard
    can act: skipping the optimizer step alone would leave ``model.eval()`` returning NaN.
    Buffers of at most ``max_numel`` entries (running statistics, counters) are copied at
    every iteration's first forward (one fused copy into preallocated tensors) and, on a
    skipped step, put back when their version or their values changed (BatchNorm updates its
    running statistics on CPU without a new version); larger ones (registered masks, tables)
    only have their version counter read, so a skipped step that changed one in place can say
    so instead of restoring it silently wrong.
    """

    def __init__(self, model, max_numel: int = 1 << 16):
        named = [(n, b) for n, b in named_buffers(model) if isinstance(b, torch.Tensor)]   # the user's names
        self.small = [(n, b) for n, b in named if b.numel() <= max_numel]
        self.big = [(n, b) for n, b in named if b.numel() > max_numel]
        with torch.no_grad():
            self._copies = [b.detach().clone() for _, b in self.small]
        self._versions: list[int] = []
        self._big_versions: list[int] = []
        self._taken = False

    def take(self) -> None:
        """Copy the small buffers and note every buffer's version (no host sync)."""
        if self._copies:
            with torch.no_grad():
                torch._foreach_copy_(self._copies, [b for _, b in self.small])
        self._versions = [b._version for _, b in self.small]
        self._big_versions = [b._version for _, b in self.big]
        self._taken = True

    def restore(self) -> dict:
        """Put back every small buffer changed since :meth:`take`; returns the evidence
        (``buffers_restored``, ``buffers_not_restored``: names, only when non-empty)."""
        out: dict[str, list[str]] = {}
        if not self._taken:
            return out
        restored = []
        with torch.no_grad():
            for (n, b), copy_, v in zip(self.small, self._copies, self._versions):
                # by value too: BatchNorm's running statistics change without a new version
                if b.shape == copy_.shape and changed(b, v, copy_):
                    b.copy_(copy_)
                    restored.append(n)
        lost = [n for (n, b), v in zip(self.big, self._big_versions) if b._version != v]
        if restored:
            out["buffers_restored"] = restored
        if lost:
            out["buffers_not_restored"] = lost
        return out


def diagnosis_text(rec) -> str:
    """The replay's one-line diagnosis of a step record, as a sentence to append (or "")."""
    r = rec.origin
    return "" if r is None else f" Forensic replay: {r.summary}."


def _overflow_text(n: int, top: float) -> str:
    return (f"{n} parameter tensor{'s' if n != 1 else ''} with finite entries but a norm of up to "
            f"{top:.3g} (float32's sum of squares overflows above {OVERFLOW_NORM:.3g}); applied, such "
            "a step writes inf into the optimizer state")


def _buffers_text(ev: dict) -> str:
    parts = []
    if ev.get("buffers_restored"):
        n = len(ev["buffers_restored"])
        parts.append(f"{n} buffer{'s' if n != 1 else ''} the bad forward changed restored")
    if ev.get("buffers_not_restored"):
        n = len(ev["buffers_not_restored"])
        parts.append(f"{n} large buffer{'s' if n != 1 else ''} changed in place NOT restored "
                     f"({', '.join(quoted(x) for x in ev['buffers_not_restored'][:3])})")
    return "".join("; " + p for p in parts)


class NonFinitePolicy:
    """The ``on_nonfinite`` policy of one watcher: the guards, the known-good snapshot, the events.

    The watcher keeps the step clock and the records; this object decides what a non-finite
    step does to the training state (skip, restore, lower the learning rate) and says so in
    an :class:`~gradhealth.events.Event`.

    Args:
        config: the watcher's :class:`~gradhealth.watch.config.WatchConfig`.
        model: the watched module (of a ``torch.compile``d one, the user's module is kept: the
            buffers keep their eager names and the replay re-runs it eagerly).
        state_tensors: returns what a rollback restores (parameters and buffers).
        internal: the watcher's ``_internal(site, exc)`` (an exception becomes an event).
        run_dir: the run directory (``rollback_storage="disk"``), or None.
    """

    def __init__(self, config, model, state_tensors: Callable[[], list[torch.Tensor]],
                 internal: Callable[[str, BaseException], None], run_dir: Path | None):
        self.config = config
        self.model = model = unwrap(model)
        self._state_tensors = state_tensors
        self._internal = internal
        self._run_dir = run_dir
        self.guards: dict[int, Any] = {}
        self.snapshot: Snapshot | None = None
        self.episode = False   # inside a run of non-finite logged steps (warn once per run)
        self.state_bad = False  # the optimizer state was found non-finite (said once)
        self.buffers_bad: set[str] = set()  # model buffers found non-finite (each said once)
        self.replays: list[ReplayReport] = []
        self.replaying = False  # the watcher's hooks stand still while a replay runs
        # skip/rollback: the buffers before each iteration's forward (restored on a skipped step)
        self.buffers = BufferSnapshot(model) if config.on_nonfinite in ("skip", "rollback") else None

    # ------------------------------------------------------------------ guards

    def install(self, opt, on_skip: Callable[[Any, dict], None], also: Callable[[], Any] | None = None) -> None:
        """Put a :class:`~gradhealth.remedies.StepGuard` on ``opt`` (skip, rollback, raise);
        ``also``: the other optimizers' parameters, checked with ``opt``'s (one bad gradient
        skips every optimizer of the step)."""
        if not self.config.guarded:
            return
        from ..remedies.guards import StepGuard

        limit = 0 if self.config.on_nonfinite == "raise" else self.config.max_consecutive_skips
        self.guards[id(opt)] = StepGuard(opt, max_consecutive_skips=limit,
                                         on_skip=lambda info, _o=opt: on_skip(_o, info), model=self.model,
                                         on_error=lambda exc: self._internal("guard", exc), also_check=also)

    def state_dict(self, optimizers: list) -> dict:
        """Guard counters per optimizer (in the watcher's order) and the episode flags."""
        guards = []
        for o in optimizers:
            g = self.guards.get(id(o))
            guards.append(None if g is None else [g.steps, g.skipped_steps, g.consecutive_skips])
        return {"guards": guards, "episode": self.episode, "state_bad": self.state_bad,
                "buffers_bad": sorted(self.buffers_bad)}

    def load_state_dict(self, state: dict, optimizers: list) -> None:
        for o, counters in zip(optimizers, state.get("guards", [])):
            g = self.guards.get(id(o))
            if g is not None and counters is not None:
                g.steps, g.skipped_steps, g.consecutive_skips = (int(c) for c in counters)
        self.episode = bool(state.get("episode", False))
        self.state_bad = bool(state.get("state_bad", False))
        bad = state.get("buffers_bad", [])
        self.buffers_bad = {str(b) for b in bad} if isinstance(bad, (list, tuple)) else set()

    def guarding(self, opt) -> bool:
        """Whether ``opt``'s steps are checked by an active guard."""
        g = self.guards.get(id(opt))
        return g is not None and g.active

    def remove(self) -> None:
        """Take every guard off (``optimizer.step`` is the optimizer's own again)."""
        for g in self.guards.values():
            try:
                g.remove()
            except Exception:
                pass
        self.guards.clear()
        self.snapshot = None

    # ------------------------------------------------------------------ forensic replay

    def replay(self, rec, captures: list, names: dict[int, str], sharded: bool = False) -> None:
        """Replay ``rec``'s step (``config.replay``); the report becomes ``rec.origin``.
        ``sharded``: the model has DTensor parameters (the layer map knows)."""
        if not self.config.replay:
            return
        report = None
        if sharded:
            report = self._replay_sharded(rec, captures, names)
        else:
            self.replaying = True
            try:
                with eager_stance():   # compiled parts re-run eagerly: every module's check runs
                    report = replay_step(self.model, captures, rec.step, names)
            except Exception as exc:
                self._internal("replay", exc)
            finally:
                self.replaying = False
        if ddp_world(self.model) > 1:   # every rank replays this step: one gather on each, always
            report = self._merged(report, rec.step, names)
        if report is None:
            return
        rec.origin = report
        self.replays.append(report)

    def _replay_sharded(self, rec, captures: list, names: dict[int, str]) -> ReplayReport | None:
        """A sharded (FSDP2) model: every rank handles the same bad step (its flag is all-reduced),
        so the ranks stay in step if each does exactly the same thing: check its batch, gather
        the findings; if no rank's batch is bad, replay every forward to its end (they all-gather
        the parameters in the same order on every rank; replay's usual early stop would make the
        ranks' collectives diverge, a hang), gather again. The backward is not replayed."""
        world = ddp_world(self.model, sharded=True)
        report = input_check(captures, rec.step)
        if world > 1:
            report = self._merged(report, rec.step, names)
        if report is None or not report.found:
            self.replaying = True
            try:
                with eager_stance():
                    report = replay_forward_lockstep(self.model, captures, rec.step, names)
            except Exception as exc:   # still join the gather below: the other ranks wait in it
                self._internal("replay", exc)
                report = None
            finally:
                self.replaying = False
            if world > 1:
                report = self._merged(report, rec.step, names)
        return report

    def _merged(self, report, step: int, names: dict[int, str]):
        try:
            return merge_across_ranks(report, step, sorted(set(names.values())))
        except Exception as exc:
            self._internal("replay", exc)
            return report

    # ------------------------------------------------------------------ snapshots

    def before_forward(self) -> None:
        """The first forward of an iteration: note the buffers (skip and rollback)."""
        if self.buffers is not None:
            self.buffers.take()

    def structure_changed(self) -> None:
        if self.buffers is not None:
            self.buffers = BufferSnapshot(self.model)

    def before_step(self, step: int, optimizers: list) -> None:
        """``"rollback"``: refresh the known-good snapshot every ``rollback_every`` steps."""
        if self.config.on_nonfinite != "rollback":
            return
        if self.snapshot is not None and step - self.snapshot.step < self.config.rollback_every:
            return
        directory = self._run_dir if self.config.rollback_storage == "disk" else None
        try:
            self.snapshot = take_snapshot(step, self._state_tensors(), optimizers, directory)
        except Exception as exc:
            self._internal("rollback snapshot", exc)

    def _rollback(self, rec, optimizers: list, why: str = "non-finite gradients") -> tuple[str, dict]:
        snap = self.snapshot
        if snap is None:
            return (f"Skipped the optimizer step at step {rec.step} (on_nonfinite='rollback'): no known-good "
                    "state saved yet, nothing to roll back to.", {"action": "skip", "to_step": None})
        try:
            restore_snapshot(snap, self._state_tensors(), optimizers)
        except Exception as exc:
            self._internal("rollback", exc)
            return (f"Skipped the optimizer step at step {rec.step}; restoring the step-{snap.step} state failed.",
                    {"action": "skip", "to_step": None})
        lrs = []
        factor = self.config.rollback_lr_factor
        if factor is not None and factor != 1.0:
            lrs = scale_lr(optimizers, factor)
        lr_txt = (f"; learning rate {lrs[0][0]:.3g} -> {lrs[0][1]:.3g}" if lrs else "")
        return (f"Rolled back at step {rec.step}: {why}; restored the parameters and optimizer "
                f"state of step {snap.step}{lr_txt}.",
                {"action": "rollback", "to_step": snap.step,
                 "lr_before": lrs[0][0] if lrs else None, "lr_after": lrs[0][1] if lrs else None})

    # ------------------------------------------------------------------ events

    def stats_warning(self, rec, n_bad: int) -> str:
        """The warning of a logged step whose statistics show non-finite gradients."""
        if self.config.on_nonfinite == "warn":
            return (f"gradhealth: non-finite gradients in {n_bad} parameter tensors at step {rec.step}."
                    + diagnosis_text(rec))
        return (f"gradhealth: non-finite gradients at step {rec.step} of an optimizer adopted "
                "during this step; the guard acts from its next step." + diagnosis_text(rec))

    def stop_event(self, rec, n_bad: int, info: dict | None = None) -> Event:
        """The critical ``guard`` event of a step that stops training (NonFiniteError)."""
        info = info or {}
        diag = rec.origin
        policy = self.config.on_nonfinite
        why = ("tensors (on_nonfinite='raise')." if policy == "raise" else
               f"tensors, {info.get('n_consecutive', '?')} steps in a row: on_nonfinite="
               f"{policy!r} spent its budget (max_consecutive_skips={info.get('max_consecutive_skips')}).")
        return Event(step=rec.step, kind="guard", layer=diag.module if diag and diag.found else None,
                     severity="critical",
                     message=(f"Stopped training at step {rec.step}: non-finite gradients in {n_bad} parameter "
                              + why + diagnosis_text(rec)),
                     evidence={"action": "raise", "n_nonfinite_params": n_bad,
                               **({"replay": diag.to_dict()} if diag else {})},
                     remedy="" if policy != "raise" else "gradhealth.watch(model, optimizer, on_nonfinite='skip')")

    def overflow_event(self, rec) -> Event:
        """A logged step whose gradients are finite but whose norm overflows float32."""
        top = max(rec.post[p] for p in rec.overflow)
        return Event(step=rec.step, kind="overflow", layer=None, severity="critical",
                     message=(f"The gradient norm overflows float32 at step {rec.step}: "
                              + _overflow_text(len(rec.overflow), top) + "."),
                     evidence={"n_overflow_params": len(rec.overflow), "max_norm": top,
                               "float32_limit": OVERFLOW_NORM})

    def state_event(self, rec, bad: list[tuple[int, str]], names: list[str]) -> Event:
        """The optimizer state holds NaN/Inf after a step (later updates are NaN, or zero)."""
        params = sorted({names[p] for p, _ in bad})
        keys = sorted({k for _, k in bad})
        shown = ", ".join(quoted(n) for n in params[:3]) + (" ..." if len(params) > 3 else "")
        cause = ("its gradients were not finite" if any(v > 0 for v in rec.nf.values())
                 else "its gradient norm overflowed float32" if rec.overflow else "an earlier step")
        return Event(step=rec.step, kind="overflow", layer=None, severity="critical",
                     message=(f"The optimizer state became non-finite at step {rec.step}: "
                              f"{', '.join(map(quoted, keys))} of {len(params)} parameter tensor"
                              f"{'s' if len(params) != 1 else ''} ({shown}) hold NaN/Inf, so later updates "
                              "of them are NaN, or zero where only a second moment is infinite (Adam "
                              f"divides by it: those parameters stop learning for good); {cause}."),
                     evidence={"optimizer_state": True, "params": params[:50], "keys": keys,
                               "n_state_tensors": len(bad)})

    def buffer_event(self, rec, names: list[str]) -> Event:
        """Model buffers (BatchNorm running statistics) hold NaN/Inf after a step."""
        owners = sorted({n.rpartition(".")[0] for n in names})   # "" is the model itself
        shown = ", ".join(quoted(n) for n in names[:3]) + (" ..." if len(names) > 3 else "")
        return Event(step=rec.step, kind="nonfinite", layer=owners[0] if len(owners) == 1 and owners[0] else None,
                     severity="error",
                     message=(f"{len(names)} model buffer{'s' if len(names) != 1 else ''} ({shown}) "
                              f"{'hold' if len(names) != 1 else 'holds'} NaN/Inf at step {rec.step}: training "
                              "mode normalises with each batch's own statistics, so the loss can look fine, "
                              "but in model.eval() that layer outputs NaN, or a constant (an infinite variance). "
                              "A batch of huge or non-finite values "
                              "reached a normalisation layer."),
                     evidence={"buffers": names[:50], "n_buffers": len(names), "modules": owners[:50]},
                     remedy=("# reset the running statistics (m.reset_running_stats() on each BatchNorm) "
                             "and find the batch: assert x.abs().max() < 1e6 before model(x)"))

    def skip_event(self, rec, n_bad: int, info: dict, optimizers: list) -> Event:
        """Act on a step the guard skipped (``"rollback"``: restore the snapshot) and say so."""
        diag = rec.origin
        evidence = {"n_nonfinite_params": n_bad, "n_consecutive": info.get("n_consecutive"),
                    "skipped_steps": info.get("skipped_steps"), "lr": rec.lr}
        over = info.get("overflow") or []
        why = f"non-finite gradients in {n_bad} parameter tensors"
        if over and not n_bad:
            top = max(d["norm"] for d in over)
            why = "the gradient norm overflows float32: " + _overflow_text(len(over), top)
            evidence.update(n_overflow_params=len(over), max_norm=top)
        if diag is not None:
            evidence["replay"] = diag.to_dict()
        layer = diag.module if (diag is not None and diag.found) else None
        if self.config.on_nonfinite == "rollback":
            rec.skip_reason = "rollback"
            msg, ev = self._rollback(rec, optimizers, why)
            evidence.update(ev)
            return Event(step=rec.step, kind="guard", layer=layer, severity="warning",
                         message=msg + diagnosis_text(rec), evidence=evidence)
        rec.skip_reason = "guard"
        evidence["action"] = "skip"
        bufs = self.buffers.restore() if self.buffers is not None else {}
        evidence.update(bufs)
        return Event(step=rec.step, kind="guard", layer=layer, severity="warning",
                     message=(f"Skipped the optimizer step at step {rec.step}: {why} "
                              "(parameters and optimizer state untouched"
                              + _buffers_text(bufs) + f"; {info.get('n_consecutive', 1)} in a row, budget "
                              f"{self.config.max_consecutive_skips})." + diagnosis_text(rec)),
                     evidence=evidence)
