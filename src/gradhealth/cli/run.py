"""``gradhealth run``: watch an unmodified training script.

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
import traceback
from pathlib import Path

HELP = "run an unmodified training script under watch: live status, diagnosis, exit code"
DESCRIPTION = """Run a training script (or -m module) unchanged, watching every optimizer it creates
and the model(s) whose parameters they hold: per-layer gradient statistics, detectors,
events, optional guard, and a run store in --run-dir. A live status line shows the step, the
loss, the global gradient norm and the newest alarm; the diagnosis is printed at the end.

Exit code: the script's own (its traceback is printed and the code is 1 if it raised);
1 if it succeeded but a pathology was found (unless --no-fail-on-pathology); 0 otherwise;
2 for a usage error (script or module not found).

Examples:
  gradhealth run train.py --epochs 3
  gradhealth run --run-dir runs/exp1 --on-nonfinite skip -m mypkg.train --lr 1e-3
  gradhealth summary runs/exp1
"""

# The policies of gradhealth.watch.config.OnNonFinite, in the order the help shows them. Not
# imported from there: building the parser of every subcommand must not import torch (the
# watch package does); tests/cli/test_cli_run.py keeps the two lists equal. The values are
# validated by WatchConfig when the watcher is created.
_GUARDS = ("skip", "raise", "warn", "rollback")


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth run`` to its subparser."""
    import argparse

    parser.add_argument("--run-dir", metavar="DIR",
                        help="where to keep the run store (default: runs/<script>-<date>-<time>)")
    parser.add_argument("--on-nonfinite", choices=_GUARDS, metavar="ACTION",
                        help="what to do with a step whose loss or gradients are NaN/Inf: "
                             + ", ".join(_GUARDS) + " (default: warn)")
    parser.add_argument("--every", type=_positive_int, metavar="N",
                        help="log per-layer statistics every N steps (default: every step)")
    parser.add_argument("--no-fail-on-pathology", dest="fail_on_pathology",
                        action="store_false",
                        help="exit 0 when the script succeeds even if pathologies were found")
    parser.add_argument("--no-live", dest="live", action="store_false",
                        help="no live status line (it is shown only on a terminal anyway)")
    # REMAINDER, as for the script: everything after ``-m MODULE`` belongs to the module.
    parser.add_argument("-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE [args ...]",
                        help="run a module as a script, like python -m MODULE [args ...]")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="script.py [args ...]",
                        help="the script and its arguments (with -m: the module's arguments)")


def _positive_int(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return n


class _Usage(Exception):
    """A usage error of ``gradhealth run`` (exit code 2)."""


# ---------------------------------------------------------------------------- target resolution

def _resolve(args) -> tuple[str, str, list[str]]:
    """Return ``(kind, target, script_args)`` with kind ``"path"`` or ``"module"``."""
    import importlib.util

    if args.module is not None:
        if not args.module or args.argv:
            raise _Usage("-m needs a module name, and takes the place of the script: "
                         "gradhealth run [options] -m module [args ...]")
        name, *module_args = args.module
        saved_path = sys.path[:]
        sys.path.insert(0, os.getcwd())  # as `python -m`: the current directory comes first
        try:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations is not None:
                if importlib.util.find_spec(name + ".__main__") is None:
                    raise _Usage(f"module {name!r} is a package without __main__; it cannot be "
                                 "run with -m. Fix: name the module that trains, e.g. "
                                 f"-m {name}.train.")
        except (ImportError, ValueError) as exc:
            spec = None
            if not isinstance(exc, ModuleNotFoundError):
                raise _Usage(f"module {name!r} cannot be found ({exc}).") from None
        finally:
            sys.path[:] = saved_path
        if spec is None:
            raise _Usage(f"no module named {name!r}. Fix: check the name and that it is "
                         "importable from the current directory (python -c 'import "
                         f"{name.split('.')[0]}').")
        return "module", name, module_args
    if not args.argv:
        raise _Usage("no script given. Usage: gradhealth run [options] script.py [args ...] "
                     "or gradhealth run [options] -m module [args ...]")
    script, *rest = args.argv
    if script.startswith("-"):
        raise _Usage(f"unknown option {script!r} before the script. Options of gradhealth run "
                     "come first, then the script and its own arguments.")
    p = Path(script)
    if not p.exists():
        raise _Usage(f"script {script!r} not found (looked in {Path.cwd()}). Fix: give the "
                     "path of the training script, or -m module.")
    if p.is_dir() and not (p / "__main__.py").exists():
        raise _Usage(f"{script!r} is a directory without __main__.py. Fix: give the training "
                     "script's path.")
    return "path", script, rest


def _default_run_dir(target: str) -> Path:
    stem = Path(target).stem if not target.endswith("__main__.py") else Path(target).parent.name
    stem = stem.split(".")[-1] or "run"
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, i = base, 1
    while p.exists():
        p, i = base.with_name(f"{base.name}-{i}"), i + 1
    return p


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
    """

    def __init__(self, run_dir, watch_kwargs: dict | None = None, status=None, stream=None,
                 meta: dict | None = None):
        self.run_dir = Path(run_dir)
        self.meta = dict(meta or {})         # recorded in each run store
        self.watch_kwargs = dict(watch_kwargs or {})
        self.status = status                 # a StatusLine or None
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
        from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                           register_optimizer_step_pre_hook)

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
        from ..watch import watch

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
        from ..report.run_view import is_pathology

        try:
            stats = _latest(watcher)
            events = list(getattr(watcher, "events", ()))
            bad = [e for e in events if is_pathology(e)]
            self.status.update(step=stats.get("step"), loss=stats.get("loss"),
                               grad_norm=stats.get("global_grad_norm"),
                               alarm=bad[-1] if bad else None, n_alarms=len(bad))
        except Exception:  # the status line is a nicety; never break training for it
            pass

    # -- messages
    def _say(self, msg: str) -> None:
        try:
            # sys.stderr looked up now: the live display redirects it while the script runs.
            print(f"gradhealth: {msg}", file=self.stream or sys.stderr, flush=True)
        except Exception:  # pragma: no cover
            pass

    def _error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)
            self._say(f"warning: {msg} Training continues.")


def _latest(watcher) -> dict:
    """The newest logged step's numbers (``watcher.history[-1]``): step, loss, global norm."""
    hist = getattr(watcher, "history", None)
    if not hist:
        return {}
    st = hist[-1]
    return {"step": st.step, "loss": st.loss, "global_grad_norm": st.global_grad_norm}


# ---------------------------------------------------------------------------- running the script

def _exec(kind: str, target: str, script_args: list[str]) -> tuple[int, object]:
    """Run the script with ``__main__`` semantics.

    Returns ``(exit code, what to print)``: ``None``, a message (``sys.exit("text")``,
    interruption) or the exception whose traceback to print -- printed by the caller once
    the live display is gone.
    """
    import runpy

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        sys.argv = [target, *script_args]
        if kind == "path":
            p = Path(target).resolve()
            sys.path.insert(0, str(p.parent if p.is_file() else p))  # as `python script.py`
            runpy.run_path(target, run_name="__main__")
        else:
            sys.path.insert(0, os.getcwd())                         # as `python -m module`
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        return 0, None
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0, None
        if isinstance(code, int):  # bool included
            return int(code), None
        return 1, str(code)
    except KeyboardInterrupt:
        return 130, "interrupted"
    except BaseException as exc:  # the script's own error: show it as Python would
        return 1, exc
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def _print_traceback(exc: BaseException, stream) -> None:
    """Print the traceback without the frames of runpy and of this module."""
    import runpy

    ours = {__file__, runpy.__file__, "<frozen runpy>"}
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=stream)


# ---------------------------------------------------------------------------- the command

def run(args) -> int:
    """Run ``gradhealth run`` on the parsed ``args``; returns the exit code (the script's own,
    else 1 when a pathology was found, 2 usage error; see DESCRIPTION)."""
    from . import EXIT_OK, EXIT_PATHOLOGY, EXIT_USAGE

    try:
        kind, target, script_args = _resolve(args)
    except _Usage as exc:
        print(f"gradhealth run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(target)
    watch_kwargs = {}
    if args.on_nonfinite:
        watch_kwargs["on_nonfinite"] = args.on_nonfinite
    if args.every:
        watch_kwargs["every"] = args.every

    from rich.console import Console

    from ..report.run_view import StatusLine

    con = Console(stderr=True, highlight=False)
    live_on = args.live and con.is_terminal
    status = StatusLine(f"gradhealth {Path(target).name}") if live_on else None
    meta = {"command": "gradhealth run " + " ".join(
                ([f"-m {target}"] if kind == "module" else [target]) + script_args),
            "cwd": os.getcwd()}
    session = WatchSession(run_dir, watch_kwargs, status=status, meta=meta)
    session.open()
    try:
        if live_on:
            from rich.live import Live

            with Live(status, console=con, refresh_per_second=4, transient=True,
                      redirect_stdout=True, redirect_stderr=True):
                code, said = _exec(kind, target, script_args)
        else:
            code, said = _exec(kind, target, script_args)
    finally:
        session.close()
    if isinstance(said, BaseException):
        _print_traceback(said, sys.stderr)
    elif said is not None:
        print(said, file=sys.stderr)
    pathological = _report(session, con)
    if code != 0:
        return code
    return EXIT_PATHOLOGY if pathological and args.fail_on_pathology else EXIT_OK


def _report(session: WatchSession, con) -> bool:
    """Print the diagnosis of every watcher; True if any found a pathology."""
    from ..errors import StoreError
    from ..report.run_view import render_summary, summarize
    from ..store import Run, load_run

    if not session.watchers:
        con.print("gradhealth: no optimizer stepped, so nothing was watched "
                  f"({session.n_backward} backward call(s) seen).", markup=False)
        return False
    bad = False
    for run_dir, name, w in session.watchers:
        events = list(getattr(w, "events", []))
        try:
            stored = load_run(run_dir, layer_stats=False)
        except StoreError:
            stored = Run(run_dir=Path(run_dir))
        summary = summarize(stored, events=events)
        if len(session.watchers) > 1:
            from rich.text import Text

            con.rule(Text(f"gradhealth diagnosis: {name}"), style="bold")
        con.print(render_summary(summary))
        if not summary["healthy"]:
            con.print(f"details: gradhealth events {run_dir}", markup=False, style="dim")
        bad = bad or not summary["healthy"]
    return bad
