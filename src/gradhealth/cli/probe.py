"""``gradhealth probe``: one batch through your model, a per-layer diagnosis out."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path

from ..errors import ModelError, ParameterError
from ._common import seed_int

HELP = "probe a model's gradient health on one batch: per-layer table, verdicts, prescriptions"
DESCRIPTION = """Probe a model's gradient health on one batch.

TARGET is FILE.py:FACTORY or package.module:FACTORY. FACTORY() returns a model, or a
(model, inputs) pair. Inputs given on the command line (--input-shape or --inputs) take
precedence over the factory's.

Examples:
  gradhealth probe examples/probe_mlp.py:make_model
  gradhealth probe mypkg.models:build --input-shape 32,784 --plot probe.png
  gradhealth probe mypkg.models:build --inputs batch.pt --loss ce --json

--inputs FILE.pt is read with torch.load(weights_only=True): a tensor, a tuple/list of
tensors, a dict of keyword tensors, or {"inputs": ..., "target": ...}.

Exit code: 0 healthy, 1 a pathology was found, 2 usage error (bad target, bad inputs, a model
that fails or is already non-finite).
"""

_OWNER = "gradhealth probe"

#: The most elements --input-shape may ask for (400 MB of float32): checked before allocating.
MAX_INPUT_ELEMENTS = 100_000_000


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth probe`` to its subparser."""
    add_target_arguments(parser)
    parser.add_argument("--mode", choices=("train", "eval", "as_is"), default="train",
                        help="train/eval mode during the probe (default: train)")
    parser.add_argument("--layers", metavar="PATTERN", action="append",
                        help="analyse only layers whose qualified name matches this glob "
                             "(repeatable), e.g. 'encoder.layers.0.*'")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed for inputs, dropout and probes")
    parser.add_argument("--device", help="move the model to this device first (e.g. cuda)")
    parser.add_argument("--no-jacobian", action="store_true",
                        help="skip the input-output Jacobian spectrum")
    parser.add_argument("--max-params", type=int, default=200_000_000, metavar="N",
                        help="refuse larger models with a cost estimate (0: no limit; default 2e8)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--plot", metavar="FILE", help="save the gradient-flow plot (PNG/SVG/PDF)")


def add_target_arguments(parser, loss_help: str | None = None) -> None:
    """TARGET, --input-shape | --inputs and --loss: shared by ``probe`` and ``cure``."""
    parser.add_argument("target", metavar="PATH_OR_MODULE:FACTORY",
                        help="FILE.py:FACTORY or package.module:FACTORY")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--input-shape", metavar="SHAPE",
                     help="random N(0,1) float inputs of this shape, e.g. 32,784 or 8,3,32,32 "
                          "(at most 100,000,000 elements)")
    src.add_argument("--inputs", metavar="FILE.pt", help="inputs saved with torch.save")
    parser.add_argument("--loss", choices=("surrogate", "mse", "ce"), default="surrogate",
                        help=loss_help or "loss to differentiate (default: surrogate, a fixed random "
                        "projection of the output; mse/ce use the file's target or a seeded random one)")


def load_target(args, owner: str = _OWNER):
    """``(model, inputs, target)`` from parsed TARGET / --input-shape / --inputs arguments."""
    import torch

    model, inputs = load_factory(args.target, owner)
    target = None
    if args.input_shape:
        gen = torch.Generator().manual_seed(args.seed)
        inputs = torch.randn(_parse_shape(args.input_shape, owner), generator=gen)
    elif args.inputs:
        inputs, target = _load_inputs(args.inputs, owner)
    if inputs is None:
        raise ParameterError("input-shape", owner, "given (or --inputs) when the factory returns "
                             "only a model", None, "pass e.g. --input-shape 32,784, or return "
                             "(model, inputs) from the factory.")
    return model, inputs, target


def _parse_shape(text: str, owner: str = _OWNER) -> tuple[int, ...]:
    parts = text.strip().replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:  # also an empty part: "12,", "12,,3"
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ParameterError("input-shape", owner, "comma-separated positive integers", text,
                             "pass e.g. --input-shape 32,784 (batch first).")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ParameterError("input-shape", owner, f"a shape of at most {MAX_INPUT_ELEMENTS:,} elements "
                             f"in all ({math.prod(shape):,} asked)", text,
                             f"pass a smaller batch (at most {MAX_INPUT_ELEMENTS:,} elements), e.g. "
                             "--input-shape 32,784, or save a batch and pass --inputs FILE.pt.")
    return shape


def _load_module(spec: str, owner: str = _OWNER):
    path_part, _, _ = spec.rpartition(":")
    looks_like_file = path_part.endswith(".py") or os.sep in path_part or "/" in path_part
    if looks_like_file:
        path = Path(path_part)
        if not path.is_file():
            raise ParameterError("target", owner, "FILE.py:FACTORY with an existing file",
                                 spec, f"no file {str(path)!r} (from {os.getcwd()}); check the path.")
        name = f"_gradhealth_probe_target_{abs(hash(str(path.resolve())))}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ParameterError("target", owner, "a Python file", spec, "point at a .py file.")
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise _user_error(f"Importing {str(path)!r} failed:", exc) from None
        finally:
            sys.path.pop(0)
        return module
    try:
        return importlib.import_module(path_part)
    except ModuleNotFoundError as exc:
        if exc.name and path_part.split(".")[0] != exc.name.split(".")[0]:
            # the target was found, but it imports something that is missing
            raise _user_error(f"Importing {path_part!r} failed:", exc) from None
        raise ParameterError("target", owner, "FILE.py:FACTORY or an importable package.module:FACTORY",
                             spec, f"module {exc.name!r} was not found (from {os.getcwd()}); give a file "
                             "path (e.g. examples/probe_mlp.py:make_model) or install the package.") from None
    except Exception as exc:
        raise _user_error(f"Importing {path_part!r} failed:", exc) from None


def _user_error(what: str, exc: BaseException) -> ModelError:
    """A one-line ModelError for an exception of the user's own code, with the user's file:line
    (the last frame in user code)."""
    from ._common import one_line, user_location

    where = user_location(exc)
    return ModelError(f"{what} {one_line(exc)}" + (f" (at {where})" if where else ""))


class _CwdOnPath:
    """The current directory first on ``sys.path`` while a target is imported and its factory
    runs, as ``python -m`` has it (the console script's ``sys.path[0]`` is its bin/ instead)."""

    def __enter__(self):
        self.saved = sys.path[:]
        sys.path.insert(0, os.getcwd())

    def __exit__(self, *exc):
        sys.path[:] = self.saved


def load_factory(spec: str, owner: str = _OWNER):
    """``(model, inputs or None)`` from ``FILE.py:FACTORY`` / ``pkg.mod:FACTORY``."""
    import torch.nn as nn

    if ":" not in spec or not spec.rpartition(":")[0] or not spec.rpartition(":")[2]:
        raise ParameterError("target", owner, "of the form PATH_OR_MODULE:FACTORY", spec,
                             "pass e.g. examples/probe_mlp.py:make_model")
    with _CwdOnPath():
        module = _load_module(spec, owner)
        fname = spec.rpartition(":")[2]
        made = _call_factory(module, fname, spec, owner)
    if isinstance(made, nn.Module):
        return made, None
    if isinstance(made, (tuple, list)) and len(made) == 2 and isinstance(made[0], nn.Module):
        return made[0], made[1]
    raise ModelError(f"The factory {fname}() must return a torch.nn.Module or a (model, inputs) pair; "
                     f"it returned {type(made).__name__}.")


def _call_factory(module, fname: str, spec: str, owner: str):
    """``module.FACTORY()``; a ParameterError when there is no such callable, a one-line
    ModelError with the user's file:line when it raises."""
    factory = getattr(module, fname, None)
    if factory is None or not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ParameterError("target", owner, "naming a callable factory in the module", spec,
                             f"{fname!r} is not a callable there; callables defined in it: "
                             + (", ".join(found) or "none"))
    try:
        return factory()
    except Exception as exc:
        raise _user_error(f"The factory {fname}() raised", exc) from None


def check_device(text: str, owner: str = _OWNER) -> None:
    """A ParameterError naming ``--device`` when torch cannot parse it or this build/machine
    has no such device; checked before the model is built."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ParameterError("device", owner, "a torch device, e.g. cpu, cuda, cuda:1 or mps", text,
                             f"pass --device cpu ({str(exc).splitlines()[0][:200]}).") from None
    rule = "a device this torch build and machine have"
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ParameterError("device", owner, rule, text,
                                 "this torch build has no CUDA; use --device cpu (or install a CUDA "
                                 "build of torch).")
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ParameterError("device", owner, rule, text,
                                 "no CUDA device is visible (torch.cuda.is_available() is False); "
                                 "use --device cpu.")
        if dev.index is not None and dev.index >= n:
            raise ParameterError("device", owner, rule, text,
                                 f"only {n} CUDA device(s) are visible; use --device cuda:0 .. cuda:{n - 1}.")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError("device", owner, rule, text, "MPS is not available here; use --device cpu.")


def _load_inputs(path: str, owner: str = _OWNER):
    import torch

    p = Path(path)
    if not p.is_file():
        raise ParameterError("inputs", owner, "an existing file saved with torch.save", path,
                             "check the path.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ParameterError("inputs", owner, "a file torch.load(weights_only=True) can read "
                             "(tensors, tuples, lists, dicts)", path,
                             f"save plain tensors, e.g. torch.save({{'inputs': x, 'target': y}}, "
                             f"'batch.pt') ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "inputs" in obj:
        return obj["inputs"], obj.get("target")
    return obj, None


def run(args) -> int:
    """Run ``gradhealth probe`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..probe import probe
    from ._common import console, print_json
    from .chain import check_plot_path

    if args.device is not None:   # ('' is not "no device": it is a wrong one)
        check_device(args.device, _OWNER)
    if args.plot is not None:     # (checked before the probe runs: a directory or '' is no figure)
        check_plot_path(args.plot, _OWNER)
    model, inputs, target = load_target(args)
    if args.device:
        try:
            model = model.to(args.device)
        except Exception as exc:
            raise ParameterError("device", _OWNER, "a device torch can use", args.device,
                                 f"{type(exc).__name__}: {exc}") from None
    if args.max_params < 0:
        raise ParameterError("max-params", _OWNER, "an integer >= 0", args.max_params,
                             "pass 0 for no limit.")
    result = probe(model, inputs, target=target, loss_fn=args.loss, mode=args.mode,
                   layers=args.layers, seed=args.seed, jacobian=not args.no_jacobian,
                   max_params=args.max_params or None)
    if args.json:
        print_json(result.to_dict())
    else:
        console().print(result)
    if args.plot is not None:
        _save_plot(result, args.plot)
    return 0 if result.healthy else 1


def _save_plot(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    result.plot(ax=ax)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise ParameterError("plot", _OWNER, "a writable image path (.png, .svg, .pdf)", path,
                             f"{type(exc).__name__}: {exc}") from None
    finally:
        plt.close(fig)
