"""Exact dynamic program for the single-resource multiple-choice knapsack (ZeroQ / AutoRound style).

The resource (stored bits) is counted in integer units; ``best[b]`` is the least summed loss of
the genes so far using exactly ``b`` units, one gene at a time:
``best_g[b] = min_o best_{g-1}[b - w[g, o]] + d[g, o]``. It is exact when every weight is an
integer multiple of one unit, which stored bits are (numel × effective bits is an integer for
the usual group sizes): the unit is then the greatest common divisor of the weights, after each
gene's lightest option is subtracted. When that leaves too many states, weights are rounded *up*
to ``cap / resolution`` units: every solution still fits, and the result is flagged inexact.

One pass solves every capacity up to the given one, so :func:`dp_frontier` reads a whole Pareto
front off a single table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .integer_program import Knapsack, Solution, check_capacity

# Cells of the choice table (genes × budget units) at most; beyond it the budget is discretized.
MAX_CELLS = 50_000_000


@dataclass(frozen=True)
class _Table:
    best: np.ndarray  # best[b]: least loss using exactly b units (inf: unreachable)
    choice: np.ndarray  # choice[g, b]: option of gene g on the best path to b units after g
    units: np.ndarray  # (G, K) weight in units above each gene's lightest option
    unit: float
    base_use: float  # summed lightest-option weights
    exact: bool


def _units(problem: Knapsack, resolution: int) -> tuple[np.ndarray, float, int, float, bool]:
    w = np.where(problem.allowed, problem.weights[0], np.inf)
    light = w.min(axis=1)
    extra = np.where(problem.allowed, w - light[:, None], 0.0)
    room = float(problem.caps[0] - light.sum())
    n_genes = len(light)
    ints = np.round(extra)
    if np.allclose(extra, ints, rtol=0, atol=1e-6) and ints.max() < 2**62:
        unit: float = math.gcd(*(int(v) for v in np.unique(ints) if v > 0)) or 1
        states = int(math.floor(room / unit + 1e-9))
        if n_genes * (states + 1) <= MAX_CELLS:
            return (ints / unit).astype(np.int64), float(unit), states, float(light.sum()), True
    states = min(resolution, MAX_CELLS // n_genes - 1)
    unit = room / states if room > 0 else 1.0
    units = np.ceil(extra / unit - 1e-9).astype(np.int64)
    return units, unit, states, float(light.sum()), False


def _table(problem: Knapsack, resolution: int) -> _Table:
    if len(problem.caps) != 1:
        raise ValueError("the dynamic program handles one resource; use the integer program "
                         "for several")
    check_capacity(problem)
    units, unit, states, base_use, exact = _units(problem, resolution)
    n_genes, n_opts = problem.loss.shape
    best = np.full(states + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((n_genes, states + 1), dtype=np.int16)
    for g in range(n_genes):
        new = np.full(states + 1, np.inf)
        pick = np.zeros(states + 1, dtype=np.int16)
        for o in range(n_opts):
            if not problem.allowed[g, o] or units[g, o] > states:
                continue
            u = int(units[g, o])
            cand = best[: states + 1 - u] + problem.loss[g, o]
            better = cand < new[u:]
            new[u:][better] = cand[better]
            pick[u:][better] = o
        best, choice[g] = new, pick
    return _Table(best, choice, units, unit, base_use, exact)


def _backtrack(problem: Knapsack, table: _Table, limit: int, start: float) -> Solution:
    b = int(np.argmin(table.best[: limit + 1]))
    choices = np.empty(problem.loss.shape[0], dtype=int)
    for g in range(len(choices) - 1, -1, -1):
        o = int(table.choice[g, b])
        choices[g] = o
        b -= int(table.units[g, o])
    assert b == 0, "backtrack must end at zero units"
    loss, use = problem.evaluate(choices)
    return Solution(choices, loss, use, table.exact, loss if table.exact else -np.inf,
                    time.perf_counter() - start, "dp" if table.exact else "dp-discretized")


def solve_dp(problem: Knapsack, resolution: int = 20_000) -> Solution:
    """The optimum for one resource (exact when the weights share a unit; see the module doc)."""
    start = time.perf_counter()
    table = _table(problem, resolution)
    return _backtrack(problem, table, len(table.best) - 1, start)


def dp_frontier(problem: Knapsack, caps: Sequence[float] | np.ndarray,
                resolution: int = 20_000) -> list[Solution]:
    """Optimal solutions for each capacity in ``caps`` (all at most the problem's own), from one
    table; the non-dominated ones, by increasing use."""
    start = time.perf_counter()
    table = _table(problem, resolution)
    front: list[Solution] = []
    for cap in sorted(caps):
        limit = int(math.floor((cap - table.base_use) / table.unit + 1e-9))
        if limit < 0 or not np.isfinite(table.best[: limit + 1]).any():
            continue
        s = _backtrack(problem, table, min(limit, len(table.best) - 1), start)
        if not front or s.loss < front[-1].loss - 1e-15:
            front.append(s)
    return front
