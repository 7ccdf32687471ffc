#!/usr/bin/env python
"""ERR-Seg's channel reduction (CRM): our vectorised selection against the straightforward loop
(per image and per rank, one histogram each, as the official code does), on random cost maps.

    python tools/benchmark_crm.py --classes 150 847 --batch 1 4 --output docs/benchmarks/crm_cpu
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
import torch  # noqa: E402

from ovss_d2.modeling.cost_aggregation import crm_select  # noqa: E402


def loop_crm(cost: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward version: Python loops over images and ranks, histc per pair."""
    b, _, t = cost.shape[:3]
    mean = cost.mean(dim=1)
    top = 3 if t > 3 else t
    _, idx = torch.topk(mean, k=top, dim=1)
    idx = idx + 1
    freq = torch.zeros(b, t, device=cost.device)
    for i in range(b):
        for r, w in enumerate([1.0, 0.1, 0.01][:top]):
            freq[i] += torch.histc(idx[i, r].flatten().float(), bins=t, min=1, max=t) * w
    return freq.topk(k, dim=1).indices.sort(dim=1).values


def timeit(fn, runs):
    times = []
    for _ in range(runs + 2):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[150, 847])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--size", type=int, default=40, help="cost-map side (640 / 16 = 40)")
    p.add_argument("--keep", type=int, default=48)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="")
    args = p.parse_args()
    rows = []
    for n in args.classes:
        for b in args.batch:
            cost = torch.randn(b, 1, n, args.size, args.size, device=args.device)
            ours = timeit(lambda: crm_select(cost, args.keep), args.runs)
            loop = timeit(lambda: loop_crm(cost, args.keep), args.runs)
            rows.append({"classes": n, "batch": b, "vectorised_ms": 1000 * ours, "loop_ms": 1000 * loop,
                         "speedup": loop / ours})
            print(f"N={n:4d} B={b}  vectorised {1000 * ours:7.2f} ms  loop {1000 * loop:7.2f} ms  "
                  f"x{loop / ours:.1f}", flush=True)
    md = [f"CRM on {args.device}, cost maps {args.size}x{args.size}, keep {args.keep}, median of {args.runs}",
          "", "| classes | batch | vectorised ms | loop ms | speed-up |", "| ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['classes']} | {r['batch']} | {r['vectorised_ms']:.2f} | {r['loop_ms']:.2f} | "
           f"{r['speedup']:.1f}x |" for r in rows]
    print("\n".join(md))
    if args.output:
        with open(args.output + ".md", "w") as f:
            f.write("\n".join(md) + "\n")
        with open(args.output + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
