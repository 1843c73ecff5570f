"""``gradhealth chain``: a one-unit-per-layer chain, its slopes per depth and its chain rule."""

from __future__ import annotations

import math

HELP = "scalar chain y = phi(w*...phi(w*x + b)...+ b): slope per depth and the chain-rule factors"
DESCRIPTION = """Evaluate y_l(x) = phi(w * y_{l-1}(x) + b), y_0 = x, for l = 1..DEPTH on a grid of x.

Prints, per depth, the largest |dy/dx| on the grid and the output range, then the
chain rule of dy/dw_k at one input (--at): every factor, and the smallest one.

Examples:
  gradhealth chain --activation tanh --weight 8 --depth 3
  gradhealth chain --activation sigmoid --weight 8 --depth 3 --bias 0 -4 -4 --plot sig.png
  gradhealth chain --activation relu --weight 2.34 --depth 20 --x-range 0 1 --at 1 --json
"""


def add_arguments(parser) -> None:
    """Add the arguments of ``gradhealth chain`` to its subparser."""
    parser.add_argument("--activation", "-a", default="tanh",
                        help="relu, leaky_relu, tanh, sigmoid, linear, ... (default: tanh)")
    parser.add_argument("--weight", "-w", type=float, nargs="+", default=[8.0], metavar="W",
                        help="shared weight, or one per layer (default: 8)")
    parser.add_argument("--depth", "-L", type=int, default=None,
                        help="number of layers, 1 to 10,000 (default: 3, or the number of weights/biases given)")
    parser.add_argument("--bias", "-b", type=float, nargs="+", default=[0.0], metavar="B",
                        help="shared bias, or one per layer (default: 0)")
    parser.add_argument("--x-range", type=float, nargs=2, default=[-1.0, 1.0], metavar=("LOW", "HIGH"),
                        help="input range (default: -1 1)")
    parser.add_argument("--points", type=int, default=1001,
                        help="grid size, 2 to 1,000,000, with depth * points <= 10,000,000 (default: 1001)")
    parser.add_argument("--at", type=float, default=None,
                        help="input at which to break dy/dw_k into factors "
                             "(default: three quarters of the way through the range, 0.5 for -1 1)")
    parser.add_argument("--plot", metavar="FILE", help="write the curves y_1..y_L (png, svg, pdf)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _one_or_list(values: list[float]):
    return values[0] if len(values) == 1 else values


_MAX_ROWS = 40


def _rows(L: int, marks=()) -> list:
    """Depths to print: all of them up to _MAX_ROWS, else the ends and around ``marks``
    (None stands for an elided stretch)."""
    if L <= _MAX_ROWS:
        return list(range(1, L + 1))
    keep = set(range(1, 11)) | set(range(L - 9, L + 1))
    for m in marks:
        if m:
            keep |= set(range(max(1, m - 2), min(L, m + 2) + 1))
    out, last = [], 0
    for l in sorted(keep):
        if l != last + 1:
            out.append(None)
        out.append(l)
        last = l
    return out


def _short_formula(fac, k: int = 1, keep: int = 8) -> str:
    """``fac.formula(k)``, with the middle factors elided for deep chains."""
    terms = fac.terms(k)
    if len(terms) <= keep + 1:
        return fac.formula(k)
    head = " * ".join(f"{f.name} ({f.value:.4g})" for f in terms[:keep // 2])
    tail = " * ".join(f"{f.name} ({f.value:.4g})" for f in terms[-(keep // 2):])
    return (f"dJ/dw{k} = {head} * ... ({len(terms) - keep} more factors; --json lists them) "
            f"* {tail} = {fac.grad_w[k - 1]:.4g}")


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if math.isfinite(v) else str(v)


def check_plot_path(path: str, owner: str):
    """The --plot path as a Path, or a ParameterError if it cannot be written as a figure."""
    from pathlib import Path

    from ..errors import ParameterError

    p = Path(path)
    ext = p.suffix.lower().lstrip(".")
    ok_ext = ("png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")
    if ext not in ok_ext:
        raise ParameterError("plot", owner, "a file name ending in " + ", ".join("." + e for e in ok_ext[:3]),
                             path, f"pass e.g. --plot {owner.split()[-1]}.png")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir() or p.is_dir():
        raise ParameterError("plot", owner, "a file in an existing directory", path,
                             f"create {parent}/ first, or choose another path.")
    return p


def save_figure(fig, path, owner: str) -> None:
    """Save ``fig`` to ``path`` and close it; a ParameterError naming ``--plot`` if it cannot be
    written."""
    import matplotlib.pyplot as plt

    from ..errors import ParameterError

    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise ParameterError("plot", owner, "a writable figure file", str(path),
                             f"choose another path ({exc}).") from None
    finally:
        plt.close(fig)


def run(args) -> int:
    """Run ``gradhealth chain`` on the parsed ``args``; returns the exit code (0 ok, 1 a pathology
    was found, 2 usage error)."""
    from ..errors import ParameterError
    from ..theory.chain import scalar_chain
    from ._common import check_finite_options, console, print_json

    owner = "gradhealth chain"
    check_finite_options(args, ("weight", "bias", "at"), owner)
    plot_path = check_plot_path(args.plot, owner) if args.plot else None
    lo, hi = args.x_range
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ParameterError("x-range", owner, "two finite numbers LOW < HIGH", f"{lo:g} {hi:g}",
                             "pass e.g. --x-range -1 1")
    depth = args.depth
    if depth is None:
        depth = max(len(args.weight), len(args.bias)) if max(len(args.weight), len(args.bias)) > 1 else 3
    res = scalar_chain(args.activation, _one_or_list(args.weight), depth, _one_or_list(args.bias),
                       x_range=(lo, hi), points=args.points)
    at = args.at if args.at is not None else lo + 0.75 * (hi - lo)
    if not math.isfinite(at):
        raise ParameterError("at", owner, "a finite number", at, "pass e.g. --at 0.5")
    fac = res.factors(at)

    if plot_path is not None:
        from ..gallery.chains import plot_chain

        save_figure(plot_chain(res), plot_path, owner)

    if args.json:
        print_json({"chain": res.to_dict(arrays=False), "factors": fac.to_dict(),
                    "plot": str(plot_path) if plot_path else None})
        return 0

    from rich.table import Table

    con = console()
    w = res.weights[0] if len(set(res.weights.tolist())) == 1 else "per layer"
    b = res.biases[0] if len(set(res.biases.tolist())) == 1 else "per layer"
    t = Table(title=f"{res.activation} chain, w = {_fmt(w) if isinstance(w, float) else w}, "
                    f"b = {_fmt(b) if isinstance(b, float) else b}, x in [{lo:g}, {hi:g}] "
                    f"({res.x.size} points)")
    for col in ("depth", "max |dy/dx|", "at x", "x growth", "y min", "y max"):
        t.add_column(col, justify="right")
    summary = res.summary()
    for l in _rows(res.depth, (res.output_overflow_depth, res.slope_overflow_depth)):
        if l is None:
            t.add_row(*["..."] * 6)
            continue
        row, prev = summary[l - 1], (summary[l - 2]["max_abs_slope"] if l > 1 else None)
        m = row["max_abs_slope"]
        growth = (f"x{m / prev:.3g}" if prev and math.isfinite(m) and math.isfinite(prev) else "")
        t.add_row(str(row["depth"]), _fmt(m), f"{row['at_x']:.4g}", growth,
                  _fmt(row["output_min"], 7), _fmt(row["output_max"], 7))
    con.print(t)
    if res.output_overflow_depth or res.slope_overflow_depth:
        con.print(f"[bold red]overflow:[/] outputs first non-finite at depth "
                  f"{res.output_overflow_depth or '-'}, slopes at depth {res.slope_overflow_depth or '-'} "
                  f"(float64; shown as inf/nan, not hidden)")

    ft = Table(title=f"chain rule at x = {at:g}  (J = y, so dJ/dy = 1;  dy/dx = {_fmt(fac.dy_dx)})")
    for col in ("layer k", "dJ/dw_k", "dJ/db_k", "smallest factor", "largest factor"):
        ft.add_column(col, justify="right")
    for k in _rows(res.depth):
        if k is None:
            ft.add_row(*["..."] * 5)
            continue
        s, g = fac.smallest(k), fac.largest(k)
        ft.add_row(str(k), _fmt(fac.grad_w[k - 1]), _fmt(fac.grad_b[k - 1]),
                   f"{s.name} = {s.meaning} = {_fmt(s.value)}", f"{g.name} = {_fmt(g.value)}")
    con.print(ft)
    con.print(_short_formula(fac), soft_wrap=True)
    if plot_path is not None:
        con.print(f"wrote {plot_path}")
    return 0
