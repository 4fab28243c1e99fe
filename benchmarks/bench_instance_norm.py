"""Time instance norm's double backward: PyTorch's (F.instance_norm) against nnunet_mtl's closed form.

RLAR differentiates the segmentation gradient at z, so each instance norm on the way is differentiated twice.
For the feature-map shapes of the benchmark plan's decoder (batch 9, 128 x 128 patch), this times, interleaved:
  first:  autograd.grad(y, x, gy, create_graph=True)      (the data gradient, recorded)
  double: autograd.grad(gx, (x, gy, weight), u)           (what the penalty's backward needs)
and prints the medians and the ratio PyTorch / ours, after checking that both give the same numbers.

    python benchmarks/bench_instance_norm.py [--steps 9] [--batch 9]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--batch", type=int, default=9)
    args = parser.parse_args()
    from nnunet_mtl.autodiff import instance_norm_with_stats

    shapes = [(32, 128), (64, 64), (128, 32), (256, 16), (512, 8)]
    print(f"instance norm, batch {args.batch}, {args.steps} interleaved repetitions (median ms):")
    print(f"  {'channels x size':16s} {'first: torch':>12s} {'ours':>8s} {'double: torch':>14s} {'ours':>8s} "
          f"{'ratio':>6s}")
    totals = {"torch": 0.0, "ours": 0.0}
    for channels, size in shapes:
        norm = nn.InstanceNorm2d(channels, affine=True)
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(args.batch, channels, size, size, generator=g) * 2 + 1).requires_grad_()
        gy = torch.randn(x.shape, generator=g).requires_grad_()
        u = torch.randn(x.shape, generator=g)
        ways = {"torch": lambda: F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps),
                "ours": lambda: instance_norm_with_stats(x, norm)[0]}
        times = {k: {"first": [], "double": []} for k in ways}
        results = {}
        for _ in range(args.steps + 1):  # the first round warms up
            for name, forward in ways.items():
                y = forward()
                box = {}
                t_first = timed(lambda: box.update(gx=torch.autograd.grad(y, x, gy, create_graph=True)[0]))
                t_double = timed(lambda: box.update(g=torch.autograd.grad(box["gx"], (x, gy, norm.weight), u)))
                times[name]["first"].append(t_first)
                times[name]["double"].append(t_double)
                results[name] = box["g"]
        for a, b in zip(results["ours"], results["torch"]):
            if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item()):
                print(f"error: the two double backwards differ at {channels} x {size}", file=sys.stderr)
                return 1
        med = {k: {p: statistics.median(v[1:]) * 1000 for p, v in t.items()} for k, t in times.items()}
        for k in totals:
            totals[k] += med[k]["double"]
        print(f"  {f'{channels} x {size}^2':16s} {med['torch']['first']:12.1f} {med['ours']['first']:8.1f} "
              f"{med['torch']['double']:14.1f} {med['ours']['double']:8.1f} "
              f"{med['torch']['double'] / med['ours']['double']:5.1f}x")
    print(f"double backward, all shapes: torch {totals['torch']:.1f} ms, ours {totals['ours']:.1f} ms, "
          f"ratio {totals['torch'] / totals['ours']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
