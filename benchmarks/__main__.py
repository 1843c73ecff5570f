"""Run every ``benchmarks/bench_*.py`` module's ``main()`` in turn (``python -m benchmarks``)."""

import importlib
import pkgutil
import sys

import benchmarks


def main(argv=None) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    wanted = (argv if argv is not None else sys.argv[1:]) or names
    for name in wanted:
        print(f"\n=== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main([])  # each with its defaults
    return 0


if __name__ == "__main__":
    sys.exit(main())
