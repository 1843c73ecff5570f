"""``gradhealth power``: w**l over depth, and where it leaves each float format."""

from __future__ import annotations

import math

HELP = "the linear chain w**l for l = 1..L, and the depth where it underflows/overflows per dtype"
DESCRIPTION = """Print w**l for l = 1..DEPTH (the gain of a linear chain with weight w), then, for
float16, bfloat16, float32 and float64, the depth at which w**l becomes subnormal,
rounds to zero, or overflows to inf.

Examples:
  gradhealth power --weight 0.6 --depth 15
  gradhealth power --weight 2.34 --depth 20 --json
"""

_MAX_ROWS = 40


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth power`` to its subparser."""
    parser.add_argument("--weight", "-w", type=float, default=0.6, help="the weight w (default: 0.6)")
    parser.add_argument("--depth", "-L", type=int, default=15, help="number of layers, 1 to 10,000,000 (default: 15)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt(v) -> str:
    if v is None:
        return "never"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def run(args) -> int:
    """Run ``gradhealth power`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..theory.chain import FLOAT_LIMITS, power_limits, power_table
    from ._common import check_finite_options, console, print_json

    check_finite_options(args, ("weight",), "gradhealth power")
    tab = power_table(args.weight, args.depth)
    limits = [power_limits(args.weight, d) for d in FLOAT_LIMITS]
    if args.json:
        print_json({"table": tab.to_dict(), "limits": [p.to_dict() for p in limits]})
        return 0

    from rich.table import Table

    con = console()
    t = Table(title=f"w**l for w = {tab.weight:g}")
    for col in ("l", "w**l (float64)", "log10|w**l|"):
        t.add_column(col, justify="right")
    L = tab.depth
    rows = list(range(1, L + 1))
    if L > _MAX_ROWS:  # first and last rows; --json has them all
        rows = rows[:_MAX_ROWS // 2] + [None] + rows[-_MAX_ROWS // 2:]
    for l in rows:
        if l is None:
            t.add_row("...", "...", "...")
        else:
            t.add_row(str(l), _fmt(float(tab.values[l - 1])), f"{tab.log10_abs[l - 1]:.3f}")
    con.print(t)

    lt = Table(title=f"depth at which |w|**L leaves each format (w = {tab.weight:g})")
    for col in ("dtype", "w as stored", "subnormal from", "zero from", "inf from",
                "layer-by-layer reaches 0"):
        lt.add_column(col, justify="right")
    stalls = False
    for p in limits:
        stalls |= bool(p.zero_depth) and not p.repeated_reaches_zero
        lt.add_row(p.dtype, f"{p.stored_weight:.10g}", _fmt(p.subnormal_depth), _fmt(p.zero_depth),
                   _fmt(p.overflow_depth),
                   "yes" if p.repeated_reaches_zero else ("no, stalls" if p.zero_depth else "-"))
    con.print(lt)
    con.print("Depths are for the exact |w|**L rounded once to the format. Multiplying one "
              "layer at a time rounds at every step and can cross a few layers earlier or later "
              "over hundreds of layers.", soft_wrap=True)
    if stalls:
        con.print("'no, stalls': with 1/2 < |w| < 1, s * |w| rounds back to s at the smallest "
                  "subnormal s, so the layer-by-layer product never reaches 0 (unless the hardware "
                  "flushes subnormals to zero).", soft_wrap=True)
    return 0
