"""Watch code that does not know it is watched: every optimizer it creates, the models they train.

How the script is attached to, without changing a line of it:

* **Optimizers** are found through torch's *global* optimizer step hooks
  (``torch.optim.optimizer.register_optimizer_step_pre_hook``): the first time any optimizer
  steps, it is watched. That covers optimizers created at any time, by any library.
* **Models** are found at that moment, once per optimizer, by one scan of the live objects
  (``gc.get_objects()``) for the ``nn.Module`` s that own the optimizer's parameters; the
  watched model is the smallest module that holds all of them (its lowest common ancestor:
  ``model`` rather than ``model.backbone`` when the optimizer trains the whole model, ``head``
  when it trains only the head). Parameters spread over separate models are watched as one
  ``ModuleDict`` keyed by the scripts' variable names. The scan costs milliseconds once and
  nothing per step; global module hooks would find the same modules but would cost a Python
  call per module call for the whole run.
* **Losses** are recorded by wrapping ``torch.Tensor.backward`` and ``torch.autograd.backward``
  while the script runs (restored afterwards); each scalar that is back-propagated is kept
  on the device (no sync) and handed to the optimizer's watcher (``watcher.observe``) at its
  next step, summed over gradient-accumulation micro-batches (the gradient being applied is
  the gradient of that sum). With ``torch.amp.GradScaler`` the unscaled loss is recorded.

The first step of each optimizer is watched from its ``step()`` on: its backward pass ran
before the optimizer was known, so backward-signal statistics start at the second step.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from pathlib import Path

from .._text import safe_text

__all__ = ["WatchSession", "find_models"]


# ---------------------------------------------------------------------------- model discovery

def find_models(optimizer) -> tuple[object | None, str]:
    """The ``nn.Module`` to watch for ``optimizer`` and its display name.

    One scan of the live objects: every module that directly owns one of the optimizer's
    parameters, and its ancestors. Returns the smallest module whose subtree holds all the
    optimizer's module-owned parameters; if no single module does, an ``nn.ModuleDict`` of
    the top-level modules involved (keyed by their variable names in the running code). Returns
    ``(None, reason)`` when no module owns any of the parameters.
    """
    import torch.nn as nn

    wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
    # type(), not isinstance(): isinstance reads ``__class__``, which some live objects
    # (deprecated torch aliases) answer with a warning.
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    parents: dict[int, list] = {}
    for m in modules:
        for c in m._modules.values():
            if c is not None:
                parents.setdefault(id(c), []).append(m)
    counts: dict[int, int] = {}
    by_id: dict[int, object] = {}
    total = 0
    for m in modules:
        own = sum(1 for p in m._parameters.values() if p is not None and id(p) in wanted)
        if not own:
            continue
        total += own
        # Add ``own`` to m and every ancestor (each once, even when modules are shared).
        stack, seen = [m], set()
        while stack:
            a = stack.pop()
            if id(a) in seen:
                continue
            seen.add(id(a))
            counts[id(a)] = counts.get(id(a), 0) + own
            by_id[id(a)] = a
            stack.extend(parents.get(id(a), ()))
    if not counts:
        return None, "none of its parameters belongs to an nn.Module"
    full = [by_id[i] for i, c in counts.items() if c >= total]
    if full:
        best = min(full, key=lambda m: sum(1 for _ in m.modules()))
        return best, _variable_name(best) or type(best).__name__
    roots = [by_id[i] for i in counts if not any(id(p) in counts for p in parents.get(i, ()))]
    names: dict[str, object] = {}
    for r in roots:
        base = (_variable_name(r) or type(r).__name__.lower()).replace(".", "_")
        key, j = base, 1
        while key in names:
            key, j = f"{base}{j}", j + 1
        names[key] = r
    return nn.ModuleDict(names), " + ".join(names)


def _variable_name(obj) -> str | None:
    """The name a variable holding ``obj`` has in the user's code (innermost frame first;
    frames of gradhealth, torch and runpy are skipped)."""
    import runpy

    import torch

    skip = tuple(os.path.dirname(m.__file__) for m in (torch, runpy))
    skip += (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename.startswith(skip):
            f = f.f_back
            continue
        for scope in (f.f_locals, f.f_globals):
            for k, v in scope.items():
                if v is obj and not k.startswith("_") and k.isidentifier():
                    return k
        f = f.f_back
    return None


# ---------------------------------------------------------------------------- the session

class WatchSession:
    """Everything ``gradhealth run`` attaches while the script runs; all of it is undone by
    :meth:`close`. Usable on its own (tests, notebooks)::

        with WatchSession("runs/x") as s:
            train()            # any code that creates optimizers and calls backward/step
        s.watchers             # [(run_dir, model_name, watcher), ...]

    Args:
        run_dir: where the run stores go (one sub-directory per watched optimizer when
            there are several).
        watch_kwargs: options passed to each :func:`~gradhealth.watch.watch`.
        status: None, or a callable given the watcher after its steps (at most 5 times a
            second): ``gradhealth run`` updates its live status line with it. Its
            exceptions are swallowed.
        stream: where the session's own messages go (None: ``sys.stderr`` at the time).
        meta: extra metadata recorded in each run store.
    """

    def __init__(self, run_dir, watch_kwargs: dict | None = None, status=None, stream=None,
                 meta: dict | None = None):
        self.run_dir = Path(run_dir)
        self.meta = dict(meta or {})         # recorded in each run store
        self.watch_kwargs = dict(watch_kwargs or {})
        self.status = status                 # None, or called with the watcher after its steps
        self.stream = stream                 # None: sys.stderr at the time of printing
        self.watchers: list[tuple[Path, str, object]] = []
        self.errors: list[str] = []
        self._by_opt: dict[int, object] = {}  # id(optimizer) -> watcher or None
        self._seen: list = []                 # the optimizers themselves: their ids stay theirs
        # Losses since the last optimizer step: (loss, {id(watcher): its step at backward}).
        self._losses: list = []
        self._acc: tuple | None = None        # (step, summed loss, watcher) with one watcher
        self._scaled: tuple | None = None     # (scaled tensor, unscaled loss) of GradScaler.scale
        self._scaler = None                   # the GradScaler seen, if any
        self._local = threading.local()
        self._undo: list = []
        self._last_status = 0.0
        self.n_backward = 0

    # -- context
    def __enter__(self) -> "WatchSession":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._undo.append(register_optimizer_step_pre_hook(self._on_step_pre).remove)
        self._undo.append(register_optimizer_step_post_hook(self._on_step_post).remove)
        self._patch(torch.Tensor, "backward", self._wrap_tensor_backward)
        self._patch(torch.autograd, "backward", self._wrap_autograd_backward)
        try:
            from torch.amp.grad_scaler import GradScaler
        except ImportError:  # pragma: no cover - very old torch
            GradScaler = None
        if GradScaler is not None:
            self._patch(GradScaler, "scale", self._wrap_scale)

    def _patch(self, owner, name: str, make) -> None:
        orig = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        setattr(owner, name, make(orig))
        self._undo.append(lambda: setattr(owner, name, orig))

    def close(self) -> None:
        """Undo every patch and hook, then detach the watchers (their stores are flushed)."""
        while self._undo:
            try:
                self._undo.pop()()
            except Exception:  # pragma: no cover - undoing must finish
                pass
        for _, _, w in self.watchers:
            try:
                w.remove()
            except Exception as exc:
                self._error(f"detaching a watcher failed: {type(exc).__name__}: {exc}")
        self._seen.clear()
        self._losses.clear()
        self._acc = self._scaled = self._scaler = None

    # -- loss capture
    #
    # Which watcher a loss belongs to: with one watcher, that one, at the step its counter
    # shows (so a step the guard skipped -- no optimizer hook fires then -- still gets its
    # NaN loss). With several (a GAN), the losses back-propagated since the last optimizer
    # step go to the watcher of the optimizer that steps next; a step skipped there loses
    # its loss. A watcher created at its optimizer's first step gets the losses of that step.
    def _record(self, t) -> None:
        """Called at each ``backward()``, before it runs: keep the scalar loss, unscaled."""
        try:
            if self._scaled is not None and t is self._scaled[0]:
                t = self._scaled[1]
            self.n_backward += 1
            if not (getattr(t, "numel", None) and t.numel() == 1 and t.is_floating_point()):
                return
            loss = t.detach().reshape(())
            self._losses.append((loss, {id(w): w.step for _, _, w in self.watchers}))
            if len(self.watchers) == 1:
                w = self.watchers[0][2]
                if self._acc is None or self._acc[0] != w.step or self._acc[2] is not w:
                    self._acc = (w.step, loss, w)
                else:  # gradient accumulation: the applied gradient is that of the sum
                    self._acc = (w.step, self._acc[1] + loss, w)
                w.observe(self._acc[1])
        except Exception:  # never break the script's backward
            pass

    def _give_losses(self, watcher) -> None:
        """Hand the losses since the last optimizer step to ``watcher`` (several watchers)."""
        mine = [loss for loss, tag in self._losses if tag.get(id(watcher), watcher.step) == watcher.step]
        if not mine:
            return
        try:
            watcher.observe(mine[0] if len(mine) == 1 else sum(mine[1:], mine[0]))
        except Exception as exc:
            self._error(f"recording the loss failed: {type(exc).__name__}: {exc}")

    def _wrap_tensor_backward(self, orig):
        session = self

        def backward(self, *args, **kwargs):
            if not getattr(session._local, "inside", False):
                session._record(self)
            session._local.inside = True
            try:
                return orig(self, *args, **kwargs)
            finally:
                session._local.inside = False

        backward.__wrapped__ = orig
        return backward

    def _wrap_autograd_backward(self, orig):
        session = self

        def backward(tensors, *args, **kwargs):
            if not getattr(session._local, "inside", False):
                import torch

                ts = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
                if len(ts) == 1:
                    session._record(ts[0])
            session._local.inside = True
            try:
                return orig(tensors, *args, **kwargs)
            finally:
                session._local.inside = False

        backward.__wrapped__ = orig
        return backward

    def _wrap_scale(self, orig):
        session = self

        def scale(self, outputs):
            out = orig(self, outputs)
            import torch

            if isinstance(outputs, torch.Tensor):
                session._scaled = (out, outputs)
                session._scaler = self
            return out

        scale.__wrapped__ = orig
        return scale

    # -- optimizer hooks
    def _on_step_pre(self, optimizer, args, kwargs) -> None:
        key = id(optimizer)
        if key in self._by_opt:
            return
        self._by_opt[key] = None
        self._seen.append(optimizer)
        try:
            self._attach(optimizer)
        except Exception as exc:  # training continues unwatched for this optimizer
            self._error(f"could not watch {type(optimizer).__name__}: {type(exc).__name__}: {exc}")

    def _attach(self, optimizer) -> None:
        from .api import watch

        wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for _, name, w in self.watchers:
            if any(id(p) in wanted for p in w.model.parameters()):
                w.add_optimizer(optimizer)  # a second optimizer of an already watched model
                self._by_opt[id(optimizer)] = w
                self._say(f"watching {type(optimizer).__name__} too, for {name}")
                return
        model, name = find_models(optimizer)
        if model is None:
            self._error(f"{type(optimizer).__name__} is not watched: {name}.")
            return
        k = len(self.watchers)
        run_dir = self.run_dir if k == 0 else self.run_dir / f"optimizer{k}"
        kwargs = dict(self.watch_kwargs)
        if self._scaler is not None and "scaler" not in kwargs:
            kwargs["scaler"] = self._scaler  # seen at scaler.scale(loss): skipped steps recorded
        meta = {**self.meta, "model_name": name, "optimizer": type(optimizer).__name__}
        watcher = watch(model, optimizer, run_dir=str(run_dir), meta=meta, **kwargs)
        self._by_opt[id(optimizer)] = watcher
        self.watchers.append((run_dir, name, watcher))
        self._give_losses(watcher)  # this first step's backward ran before the watcher existed
        self._say(f"watching {name} ({type(model).__name__}, {len(watcher.layers)} layers) "
                  f"with {type(optimizer).__name__} -> {run_dir}")

    def _on_step_post(self, optimizer, args, kwargs) -> None:
        w = self._by_opt.get(id(optimizer))
        if w is not None and len(self.watchers) > 1:
            self._give_losses(w)
        self._losses.clear()
        if w is not None and self.status is not None:
            now = time.monotonic()
            if now - self._last_status >= 0.2:
                self._last_status = now
                self._update_status(w)

    def _update_status(self, watcher) -> None:
        try:
            self.status(watcher)
        except Exception:  # the status line is a nicety; never break training for it
            pass

    # -- messages
    def _say(self, msg: str) -> None:
        try:
            # sys.stderr looked up now: the live display redirects it while the script runs.
            # The message holds the user's names (model, run directory): escaped, one line.
            print(f"gradhealth: {safe_text(msg)}", file=self.stream or sys.stderr, flush=True)
        except Exception:  # pragma: no cover
            pass

    def _error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)
            self._say(f"warning: {msg} Training continues.")
