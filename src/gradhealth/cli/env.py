"""``gradhealth env``: versions and platform, paste-ready for a bug report."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

HELP = "print versions and platform, paste-ready for a bug report"


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth env`` to its subparser."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def collect() -> dict:
    """Versions of gradhealth, Python, the platform and each (optional) dependency."""
    from .. import __version__

    info = {"gradhealth": __version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "machine": platform.machine()}
    for mod in ("numpy", "scipy", "torch", "matplotlib", "rich", "pandas",
                "lightning", "transformers", "tensorboard"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", None) or importlib.metadata.version(mod)
        except Exception:  # not installed, or broken: say so rather than fail
            info[mod] = "not installed"
    try:
        import torch

        info["torch.cuda"] = (f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))"
                              if torch.cuda.is_available() else "not available")
        info["torch.threads"] = torch.get_num_threads()
    except Exception:
        pass
    return info


def run(args) -> int:
    """Run ``gradhealth env`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    info = collect()
    if args.json:
        from ._common import print_json

        print_json(info)
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0
