"""``gradhealth meanfield``: mean-field fixed points, growth rates and depth scales of one init."""

from __future__ import annotations

import math

HELP = "mean-field theory of one initialisation: q*, chi_1, c*, depth scales, ordered/chaotic"
DESCRIPTION = """Signal propagation through a wide random net with W ~ N(0, sigma_w2/n), b ~ N(0, sigma_b2).

Prints the fixed point q* of the length map, chi_1 (growth of squared gradient norms per
layer), the correlation fixed point c* and slope chi_c, the depth scales xi_q and xi_c, and
the phase: ordered (chi_1 < 1, vanishing), critical, or chaotic (chi_1 > 1, exploding).

Examples:
  gradhealth meanfield --activation tanh --sigma-w2 1.5 --sigma-b2 0.05
  gradhealth meanfield --activation relu --sigma-w2 2 --sigma-b2 0 --json
  gradhealth meanfield --activation tanh --sigma-b2 0.05 --critical
"""

_ROWS = [
    ("q_star", "q*", "pre-activation variance the layers settle to"),
    ("chi_1", "chi_1", "squared-gradient growth per layer (>1 explodes)"),
    ("c_star", "c*", "correlation two inputs settle to"),
    ("chi_c", "chi_c", "slope of the correlation map at c*"),
    ("xi_q", "xi_q", "layers for lengths to settle, -1/ln chi_q"),
    ("xi_c", "xi_c", "layers correlations survive, -1/ln chi_c"),
]
_KEYS = ("q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "phase")


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth meanfield`` to its subparser."""
    parser.add_argument("--activation", "-a", default="tanh",
                        help="tanh, relu, erf, sigmoid, linear, hard_tanh, selu, gelu, swish, ... "
                             "(default: tanh)")
    parser.add_argument("--sigma-w2", type=float, default=None, metavar="W",
                        help="weight variance times fan-in (1: LeCun/Xavier, 2: He)")
    parser.add_argument("--sigma-b2", type=float, default=0.0, metavar="B",
                        help="bias variance (default: 0)")
    parser.add_argument("--dropout-keep", type=float, default=1.0, metavar="R",
                        help="dropout keep probability in (0, 1] (default: 1, no dropout)")
    parser.add_argument("--critical", action="store_true",
                        help="find the critical sigma_w2 (chi_1 = 1) at --sigma-b2; no --sigma-w2")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.6g}"


def run(args) -> int:
    """Run ``gradhealth meanfield`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..errors import ParameterError
    from ..theory.criticality import critical_sigma_w2
    from ..theory.meanfield import analyze
    from ._common import console, print_json

    owner = "gradhealth meanfield"
    crit = None
    if args.critical:
        if args.sigma_w2 is not None:
            raise ParameterError("sigma-w2", owner, "left out when --critical is given (the "
                                 "critical value is what --critical computes)", args.sigma_w2,
                                 "drop --sigma-w2, or drop --critical to analyse that sigma_w2.")
        crit = critical_sigma_w2(args.activation, args.sigma_b2, dropout_keep=args.dropout_keep)
        sw2 = crit
    else:
        if args.sigma_w2 is None:
            raise ParameterError("sigma-w2", owner, "given (or --critical)", None,
                                 "pass e.g. --sigma-w2 1.5, or --critical to find the edge of chaos.")
        sw2 = args.sigma_w2
    r = analyze(args.activation, sw2, args.sigma_b2, dropout_keep=args.dropout_keep)
    if args.json:
        out = {k: getattr(r, k) for k in _KEYS}
        if crit is not None:
            out["critical_sigma_w2"] = crit
        print_json(out)
        return 0

    from rich.table import Table

    con = console()
    head = f"{r.activation}: sigma_w2 = {sw2:.6g}, sigma_b2 = {args.sigma_b2:g}"
    if args.dropout_keep < 1.0:
        head += f", dropout keep = {args.dropout_keep:g}"
    if crit is not None:
        con.print(f"critical sigma_w2 = {crit:.6g}  (chi_1 = 1 at sigma_b2 = {args.sigma_b2:g}"
                  + (f", dropout keep {args.dropout_keep:g})" if args.dropout_keep < 1 else ")"))
    table = Table(title=f"{head}  ({r.method})", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    for key, label, meaning in _ROWS:
        table.add_row(label, _fmt(getattr(r, key)), meaning)
    table.add_row("phase", r.phase, "ordered / critical / chaotic")
    con.print(table)
    con.print(r.interpretation())
    return 0
