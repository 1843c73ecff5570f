"""Cost of :func:`gradhealth.probe` and of its Jacobian spectrum estimate.

``python -m benchmarks.bench_probe`` (``--quick`` for a short smoke run, ``--device cuda``).

1. **Probe vs one training step.** A 24-layer width-1024 ReLU MLP (He init) at batch 64 with a
   cross-entropy loss. The baseline is one bare training step (forward, backward, SGD step,
   ``zero_grad``). The probe is timed with its default settings (one forward, three backward
   passes, Lanczos on 8 examples) and with ``jacobian=False``.
2. **Jacobian spectrum vs materialising the Jacobian.** A 100-layer width-512 tanh MLP at the
   edge of chaos (``sigma_w2 = 1``), on 8 examples: :func:`gradhealth.probe.jacobian_spectrum`
   (16 Lanczos steps, top 3 singular values, 4 Hutchinson probes) against
   ``torch.autograd.functional.jacobian(..., vectorize=True)`` of the 8-example batch (a
   4096 x 4096 matrix) followed by ``torch.linalg.svdvals``. Both give the same top singular
   value (printed).

Each repeat times every configuration in turn (interleaved), so a slow drift of a shared
machine hits all of them alike; the table shows the median over repeats and the range.
No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch import nn

from gradhealth.probe import jacobian_spectrum, probe


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def mlp_case(device):
    torch.manual_seed(0)
    layers = []
    for _ in range(23):
        lin = nn.Linear(1024, 1024)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(1024, 10))
    model = nn.Sequential(*layers).to(device)
    x = torch.randn(64, 1024, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    return model, x, y


def deep_tanh(device, depth=100, width=512):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, 0.0, width ** -0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers).to(device)


def bench_probe(device, repeats: int):
    model, x, y = mlp_case(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def full():
        probe(model, x, y, loss_fn="ce")

    def nojac():
        probe(model, x, y, loss_fn="ce", jacobian=False)

    for _ in range(2):  # warm-up: allocator, lazy imports, kernels
        step()
    full()
    res = {"step": [], "probe": [], "probe_nojac": []}
    for _ in range(repeats):
        res["step"].append(statistics.median(_timed(step, device) for _ in range(5)))
        res["probe"].append(_timed(full, device))
        res["probe_nojac"].append(_timed(nojac, device))
    return res


def bench_jacobian(device, repeats: int):
    net = deep_tanh(device)
    x = torch.randn(8, 512, device=device)

    def estimate():
        return jacobian_spectrum(net, x, k=3, steps=16)

    def materialise():
        J = torch.autograd.functional.jacobian(net, x, vectorize=True).reshape(x.numel(), x.numel())
        return torch.linalg.svdvals(J)

    est, sv = estimate(), materialise()  # warm-up, and the agreement check
    agree = abs(est.top[0] - float(sv[0])) / float(sv[0])
    res = {"estimate": [], "materialise": []}
    for _ in range(repeats):
        res["estimate"].append(_timed(estimate, device))
        res["materialise"].append(_timed(materialise, device))
    info = {"top_estimate": est.top[0], "top_svd": float(sv[0]), "rel_diff": agree,
            "steps": est.steps, "jac_mib": x.numel() ** 2 * 4 / 2**20,
            "basis_mib": est.steps * x.numel() * 8 / 2**20}
    return res, info


def _row(name, values, base=None):
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    ratio = f"{med / statistics.median(base):8.1f}x" if base else "        "
    return f"| {name:<46} | {1e3 * med:10.1f} | {1e3 * lo:8.1f}..{1e3 * hi:<8.1f} | {ratio} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:] if __name__ == "__main__" else [])
    device = torch.device(args.device)
    reps = 2 if args.quick else args.repeats
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"repeats {reps} (median, range)")
    head = f"| {'configuration':<46} | {'median ms':>10} | {'range ms':>18} | {'ratio':>9} |"
    sep = "|" + "-" * 48 + "|" + "-" * 12 + "|" + "-" * 20 + "|" + "-" * 11 + "|"

    res = bench_probe(device, reps)
    print("\n1. probe vs one training step: MLP 24 x 1024 (ReLU, He), batch 64, cross-entropy")
    print(head)
    print(sep)
    print(_row("bare training step (fwd + bwd + SGD)", res["step"]))
    print(_row("probe, default (with Jacobian spectrum)", res["probe"], res["step"]))
    print(_row("probe, jacobian=False", res["probe_nojac"], res["step"]))

    res, info = bench_jacobian(device, reps)
    print("\n2. Jacobian spectrum: MLP 100 x 512 (tanh, sigma_w2 = 1), 8 examples (J is 4096 x 4096)")
    print(head)
    print(sep)
    print(_row(f"Lanczos estimate ({info['steps']} steps, top 3 + rms)", res["estimate"]))
    print(_row("materialise J (vectorised jacobian) + svdvals", res["materialise"], res["estimate"]))
    speedup = statistics.median(res["materialise"]) / statistics.median(res["estimate"])
    print(f"\nmaterialising is {speedup:.1f}x slower; top singular value {info['top_estimate']:.6g} "
          f"(Lanczos) vs {info['top_svd']:.6g} (SVD), relative difference {info['rel_diff']:.1e}; "
          f"memory: J {info['jac_mib']:.0f} MiB vs Lanczos basis {info['basis_mib']:.2f} MiB")
    if not math.isfinite(info["rel_diff"]) or info["rel_diff"] > 1e-2:
        print("WARNING: the estimate and the SVD disagree by more than 1%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
