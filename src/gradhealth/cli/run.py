"""``gradhealth run``: watch an unmodified training script.

How the script is attached to (optimizers through global step hooks, models by one scan of
the live objects, losses by wrapping ``backward``): :mod:`gradhealth.watch.session`, whose
:class:`~gradhealth.watch.session.WatchSession` this command opens around the script.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

HELP = "run an unmodified training script under watch: live status, diagnosis, exit code"
DESCRIPTION = """Run a training script (or -m module) unchanged, watching every optimizer it creates
and the model(s) whose parameters they hold: per-layer gradient statistics, detectors,
events, optional guard, and a run store in --run-dir. A live status line shows the step, the
loss, the global gradient norm and the newest alarm; the diagnosis is printed at the end.

Exit code: the script's own (if it raised: its traceback without gradhealth's frames, then one
line with the last line of your code it reached, and the code is 1); 1 if it succeeded but a
pathology was found (unless --no-fail-on-pathology); 0 otherwise; 2 for a usage error (script
or module not found, a --run-dir that is a file or cannot be created: refused before the
script starts).

Under torchrun (RANK and WORLD_SIZE set): every rank watches and writes its own store (rank 0
in --run-dir, rank r in --run-dir/rank<r>); only rank 0 prints. The exit code is the script's
unless --fail-on-pathology: torchrun stops every rank as soon as one exits non-zero, which
could cut another rank's store short. Gate on `gradhealth summary RUN_DIR` instead.

Examples:
  gradhealth run train.py --epochs 3
  gradhealth run --run-dir runs/exp1 --on-nonfinite skip -m mypkg.train --lr 1e-3
  torchrun --standalone --nproc_per_node=2 -m gradhealth run --run-dir runs/ddp train.py
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
                        action="store_const", const=False, default=None,
                        help="exit 0 when the script succeeds even if pathologies were found "
                             "(the default under torchrun)")
    parser.add_argument("--fail-on-pathology", dest="fail_on_pathology", action="store_const", const=True,
                        help="exit 1 when the script succeeds but a pathology was found (the "
                             "default, except under torchrun)")
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


def __getattr__(name: str):
    # the old import paths (gradhealth.cli.run.WatchSession / find_models) keep working; lazily,
    # because building the parser must not import torch
    if name in ("WatchSession", "find_models"):
        from ..watch import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_run_dir(target: str) -> Path:
    stem = Path(target).stem if not target.endswith("__main__.py") else Path(target).parent.name
    stem = stem.split(".")[-1] or "run"
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, i = base, 1
    while p.exists():
        p, i = base.with_name(f"{base.name}-{i}"), i + 1
    return p


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


def _without_gradhealth(te: traceback.TracebackException, seen=None) -> None:
    """Drop the frames of gradhealth (and runpy) from ``te`` and the exceptions it chains."""
    from ._common import is_gradhealth_file

    seen = set() if seen is None else seen
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not is_gradhealth_file(f.filename)])
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _without_gradhealth(other, seen)


def _print_traceback(exc: BaseException, stream) -> None:
    """Print the script's traceback without the frames of runpy and of gradhealth, then one
    line: where in the user's code it stopped (the last frame in user code), and why."""
    from ._common import one_line, user_location

    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _without_gradhealth(te)
    stream.write("".join(te.format()))
    where = user_location(exc)
    stream.write(f"gradhealth run: the script stopped{' at ' + where if where else ''}: {one_line(exc)}\n")


def _torchrun_rank() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment; ``(0, 1)`` outside it."""
    try:
        return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 0, 1


def _check_run_dir(run_dir: Path) -> None:
    """Raise _Usage unless the store can make ``run_dir``: checked before the script starts, not
    after it trained. Nothing is created here (a script that never steps leaves no directory)."""
    from ..errors import ParameterError

    def refuse(why: str) -> None:
        raise _Usage(str(ParameterError("run-dir", "gradhealth run", "a directory that can be created and "
                                        "written", str(run_dir), why)))

    if run_dir.exists() and not run_dir.is_dir():
        refuse("it is a file; pass a directory (new or a run directory), e.g. --run-dir runs/exp1.")
    existing = run_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        refuse(f"{str(existing)!r} is a file, so nothing can be created under it; pass a path in a "
               "writable directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        refuse(f"{str(existing)!r} is not writable; pass a path in a writable directory.")


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
    if args.run_dir is not None and not args.run_dir.strip():
        from ..errors import ParameterError

        print("gradhealth run: error: " + str(ParameterError(
            "run-dir", "gradhealth run", "a directory path (not blank)", args.run_dir,
            "pass e.g. --run-dir runs/exp1, or leave it out for the default.")), file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(target)
    try:
        _check_run_dir(run_dir)
    except _Usage as exc:
        print(f"gradhealth run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    watch_kwargs = {}
    if args.on_nonfinite:
        watch_kwargs["on_nonfinite"] = args.on_nonfinite
    if args.every:
        watch_kwargs["every"] = args.every

    from rich.console import Console

    from ..report.run_view import StatusLine

    rank, world = _torchrun_rank()
    quiet = rank != 0                            # under torchrun only rank 0 prints
    fail = args.fail_on_pathology if args.fail_on_pathology is not None else world == 1
    sink = open(os.devnull, "w") if quiet else None  # noqa: SIM115 - closed below
    con = Console(file=sink, highlight=False) if quiet else Console(stderr=True, highlight=False)
    live_on = args.live and con.is_terminal and not quiet
    status = StatusLine(f"gradhealth {Path(target).name}") if live_on else None
    meta = {"command": "gradhealth run " + " ".join(
                ([f"-m {target}"] if kind == "module" else [target]) + script_args),
            "cwd": os.getcwd()}
    from ..watch.session import WatchSession

    session = WatchSession(run_dir, watch_kwargs, status=_status_updater(status) if status else None,
                           meta=meta, stream=sink)
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
    if sink is not None:
        sink.close()
    if pathological and not fail and world > 1 and not quiet:
        from .._text import safe_text

        con.print(f"gradhealth: exit code {code} (the script's) under torchrun; "
                  f"`gradhealth summary {safe_text(str(run_dir))}` exits 1 on these pathologies.", markup=False)
    if code != 0:
        return code
    return EXIT_PATHOLOGY if pathological and fail else EXIT_OK


def _status_updater(line):
    """What the session calls after a watched step: the live status line's newest numbers."""
    from ..report.run_view import is_pathology

    def update(watcher) -> None:
        hist = watcher.history
        st = hist[-1] if hist else None
        bad = [e for e in watcher.events if is_pathology(e)]
        line.update(step=st.step if st else None, loss=st.loss if st else None,
                    grad_norm=st.global_grad_norm if st else None,
                    alarm=bad[-1] if bad else None, n_alarms=len(bad))
    return update


def _report(session, con) -> bool:
    """Print the diagnosis of every watcher; True if any found a pathology."""
    from .._text import safe_text
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
            con.print(f"details: gradhealth events {safe_text(str(run_dir))}", markup=False, style="dim")
        bad = bad or not summary["healthy"]
    return bad
