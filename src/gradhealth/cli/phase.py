"""``gradhealth phase``: the mean-field phase diagram of an activation, as a picture."""

from __future__ import annotations

HELP = "phase diagram (sigma_w2 x sigma_b2): chi_1 or xi_c, the critical line, He/LeCun marked"
DESCRIPTION = """Draw the order-to-chaos phase diagram of an activation over a sigma_w2 x sigma_b2 grid.

Colour is log2(chi_1) (blue: gradients vanish, red: they explode) or log10(xi_c) (how many
layers correlations survive). The black line is the critical line chi_1 = 1; circles mark
LeCun/Xavier (sigma_w2 = 1) and squares He (sigma_w2 = 2) at sigma_b2 = 0 and 0.05.

Examples:
  gradhealth phase --activation tanh --out phase.png
  gradhealth phase --activation relu --color xi_c --grid 100 --out relu.svg
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth phase`` to its subparser."""
    parser.add_argument("--activation", "-a", default="tanh", help="activation name (default: tanh)")
    parser.add_argument("--out", "-o", default="phase.png",
                        help="figure file: .png, .svg or .pdf (default: phase.png)")
    parser.add_argument("--color", choices=("chi_1", "xi_c"), default="chi_1",
                        help="quantity shown in colour (default: chi_1)")
    parser.add_argument("--grid", type=int, default=200, metavar="N",
                        help="N x N grid points (default: 200)")
    parser.add_argument("--sigma-w2-max", type=float, default=4.0, metavar="W",
                        help="largest sigma_w2 (default: 4)")
    parser.add_argument("--sigma-b2-max", type=float, default=0.3, metavar="B",
                        help="largest sigma_b2 (default: 0.3)")
    parser.add_argument("--dropout-keep", type=float, default=1.0, metavar="R",
                        help="dropout keep probability in (0, 1] (default: 1)")
    parser.add_argument("--json", action="store_true",
                        help="also print a machine-readable summary (critical line, init points)")


def check_figure_path(path: str, param: str, owner: str):
    """``path`` as a Path if a figure can be written there, else ParameterError."""
    import os
    from pathlib import Path

    from ..errors import ParameterError

    p = Path(path)
    ext = p.suffix.lower().lstrip(".")
    if ext not in ("png", "svg", "pdf"):
        example = owner.split()[-1] if owner.startswith("gradhealth ") else "figure"
        raise ParameterError(param, owner, "a file name ending in .png, .svg or .pdf", path,
                             f"pass e.g. --{param} {example}.png")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir() or p.is_dir():
        raise ParameterError(param, owner, "a file in an existing directory", path,
                             f"create {parent}/ first, or choose another path.")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ParameterError(param, owner, "a writable file", path,
                             "choose a location you can write to.")
    return p


def run(args) -> int:
    """Run ``gradhealth phase`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    import time

    import numpy as np

    from .._checks import check_int, check_real
    from ..theory.criticality import phase_diagram
    from ..theory.meanfield import analyze
    from ._common import console, print_json, save_figure

    owner = "gradhealth phase"
    out = check_figure_path(args.out, "out", owner)
    n = check_int(args.grid, "grid", owner, min_value=2, max_value=1000,
                  fix="pass e.g. --grid 200 (2 to 1000).")
    wmax = check_real(args.sigma_w2_max, "sigma-w2-max", owner, low=0.0, low_inclusive=False,
                      fix="pass e.g. --sigma-w2-max 4.")
    bmax = check_real(args.sigma_b2_max, "sigma-b2-max", owner, low=0.0, low_inclusive=False,
                      fix="pass e.g. --sigma-b2-max 0.3.")
    w = np.linspace(wmax / n, wmax, n)
    b = np.linspace(0.0, bmax, n)
    t0 = time.perf_counter()
    pd = phase_diagram(args.activation, w, b, dropout_keep=args.dropout_keep)
    seconds = time.perf_counter() - t0

    save_figure(lambda: pd.plot(color=args.color), out, owner)

    from ..theory.criticality import critical_line

    probe_b = [x for x in (0.0, 0.05, 0.1, 0.2) if x <= bmax] or [0.0]
    crit = critical_line(args.activation, probe_b, dropout_keep=args.dropout_keep)
    inits = []
    for name, sw2 in (("LeCun/Xavier", 1.0), ("He", 2.0)):
        for sb2 in (0.0, 0.05):
            r = analyze(args.activation, sw2, sb2, dropout_keep=args.dropout_keep)
            inits.append({"init": name, "sigma_w2": sw2, "sigma_b2": sb2, "chi_1": r.chi_1,
                          "xi_c": r.xi_c, "phase": r.phase})
    if args.json:
        print_json({"out": str(out), "activation": pd.activation, "grid": n, "seconds": seconds,
                    "critical_line": {"sigma_b2": probe_b, "sigma_w2": crit}, "inits": inits,
                    "note": pd.note})
        return 0
    con = console()
    con.print(f"wrote {out}: {pd.activation}, {n}x{n} grid (sigma_w2 {w[0]:.3g}..{wmax:g}, "
              f"sigma_b2 0..{bmax:g}) computed in {seconds:.2f} s")
    line = ", ".join(f"{c:.4g} at sigma_b2={x:g}" if np.isfinite(c) else f"none at sigma_b2={x:g}"
                     for x, c in zip(probe_b, crit))
    con.print(f"critical sigma_w2: {line}")
    for row in inits:
        con.print(f"  {row['init']:<13} sigma_w2={row['sigma_w2']:g} sigma_b2={row['sigma_b2']:<5g}"
                  f" chi_1={row['chi_1']:.4g}  xi_c={row['xi_c']:.4g}  {row['phase']}")
    if pd.note:
        con.print(f"note: {pd.note}", markup=False)
    return 0
