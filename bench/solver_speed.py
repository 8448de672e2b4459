"""How fast the knapsack solvers prove optimality: 100 and 1,000 genes × 8 options.

Instances look like quantization profiles: per gene a random size and sensitivity, options at
2..8 and 16 bits with loss falling about 4× per bit, a budget between the cheapest and the most
expensive configuration; the two-resource form adds a latency-like resource that is not
proportional to bits. Prints seconds per solve (median of ``--repeat``) and the proof status.

    python bench/solver_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mpsearch.searcher import Knapsack, lagrangian_greedy, solve, solve_dp, solve_milp

BITS = np.array([2, 3, 4, 5, 6, 7, 8, 16], dtype=float)


def instance(genes: int, resources: int, seed: int) -> Knapsack:
    rng = np.random.default_rng(seed)
    numel = 4096 * rng.integers(16, 256, size=genes)
    weights = [numel[:, None] * (BITS + 0.25)[None, :]]
    if resources == 2:  # a latency-like cost: fast kernels at 4 and 8 bits, slow otherwise
        speed = np.where(np.isin(BITS, (4, 8, 16)), 1.0, 1.6) * (BITS / 16 + 0.3)
        weights.append(numel[:, None] * speed[None, :] * rng.uniform(0.9, 1.1, (genes, 8)))
    w = np.stack(weights)
    loss = rng.lognormal(0, 1.5, genes)[:, None] * 4.0 ** (-BITS)[None, :] \
        * rng.uniform(0.7, 1.3, (genes, 8))
    loss[:, -1] = 0.0
    caps = w.min(axis=2).sum(axis=1) + 0.3 * (w.max(axis=2) - w.min(axis=2)).sum(axis=1)
    if resources == 2:
        caps[1] = w[1].min(axis=1).sum() + 0.2 * (w[1].max(axis=1) - w[1].min(axis=1)).sum()
    return Knapsack(loss, w, caps)


def timed(fn, problem, repeat):
    times, sol = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        sol = fn(problem)
        times.append(time.perf_counter() - start)
    return statistics.median(times), sol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = [("genes", "resources", "seed", "solver", "seconds", "proven optimal", "loss", "gap to greedy")]
    for genes in (100, 1000):
        for resources in (1, 2):
            for seed in range(args.seeds):
                p = instance(genes, resources, seed)
                greedy = lagrangian_greedy(p)
                solvers = [("solve (greedy + HiGHS)", solve), ("HiGHS alone", solve_milp)]
                if resources == 1:
                    solvers.append(("dynamic program", solve_dp))
                for label, fn in solvers:
                    sec, s = timed(fn, p, args.repeat)
                    rows.append((genes, resources, seed, label, f"{sec:.3f}", s.optimal,
                                 f"{s.loss:.6g}", f"{(greedy.loss - s.loss) / s.loss:.2e}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
