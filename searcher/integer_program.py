"""The multiple-choice knapsack over a sensitivity profile, solved to proven optimality.

One option per gene; minimize the summed degradation; the options' resource use (stored bits, and
optionally a second resource such as latency) must fit the capacities. Pure functions over numpy
arrays, so they are tested and timed without a model:

* :func:`solve_milp`: the exact program through HiGHS (``scipy.optimize.milp``), relative gap 0.
  Each gene's degradation is taken relative to its best option, ``d[g, o] - min_o d[g, o] >= 0``:
  the objective then measures only avoidable loss, so the solver's gap tolerances act on it rather
  than on a large constant ("maximize total fidelity" would hide real loss inside the gap).
* :func:`lagrangian_greedy`: the classic LP-relaxation greedy (Sinha and Zoltners, 1979) over
  each gene's lower convex hull; its solution is feasible and its LP value a lower bound, so it is
  the fallback when HiGHS fails or runs out of time and the bound reported beside the optimum.
* :func:`solve`: both, the better one returned, the gap stated; with one resource the program
  is first reduced to its core (options whose LP reduced cost exceeds the greedy's gap go).
* :func:`pareto_sweep`: optimal solutions over a range of capacities, the non-dominated ones.

The searcher that proposes these solutions is :mod:`.ip_searcher`; the dynamic program for one
resource is :mod:`.dynamic_program`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpsearch.spaces.errors import BudgetError

# HiGHS accepts integer solutions that break a row by its feasibility tolerance (1e-7, relative
# here since rows are normalized to capacity 1); a violating solution is re-solved with the
# capacity lowered by the violation, at most this many times.
_REPAIR_ROUNDS = 4


@dataclass(frozen=True)
class Knapsack:
    """``loss[g, o]`` (``inf`` = option not allowed), ``weights[r, g, o]``, ``caps[r]``."""

    loss: np.ndarray
    weights: np.ndarray
    caps: np.ndarray

    def __post_init__(self) -> None:
        g, k = self.loss.shape
        assert self.weights.shape[1:] == (g, k), "weights must be (resources, genes, options)"
        assert self.caps.shape == (self.weights.shape[0],), "one capacity per resource"

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.loss)

    def evaluate(self, choices: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed loss and resource use of ``choices`` (one option index per gene)."""
        rows = np.arange(len(choices))
        return float(self.loss[rows, choices].sum()), self.weights[:, rows, choices].sum(axis=1)

    def fits(self, choices: np.ndarray) -> bool:
        _, use = self.evaluate(choices)
        return bool(np.all(use <= self.caps * (1 + 1e-12)))

    def with_caps(self, caps: Sequence[float] | np.ndarray) -> Knapsack:
        return Knapsack(self.loss, self.weights, np.asarray(caps, dtype=float))


@dataclass(frozen=True)
class Solution:
    choices: np.ndarray  # option index per gene
    loss: float  # summed loss (absolute, not relative)
    use: np.ndarray  # resource use per resource
    optimal: bool  # proven optimal (gap 0)
    bound: float  # a lower bound on the optimal loss (-inf when none is known)
    seconds: float
    method: str


def check_capacity(problem: Knapsack) -> None:
    """Raise BudgetError when even the least-use option of every gene exceeds a capacity."""
    w = np.where(problem.allowed[None], problem.weights, np.inf)
    least = w.min(axis=2).sum(axis=1)
    over = np.nonzero(least > problem.caps * (1 + 1e-12))[0]
    if over.size:
        r = int(over[0])
        raise BudgetError(f"knapsack: resource {r} needs at least {least[r]:.6g}, capacity is "
                          f"{problem.caps[r]:.6g}; raise the budget or allow cheaper options")


# -- Lagrangian greedy ---------------------------------------------------------------------------
def _hull(weights: np.ndarray, loss: np.ndarray, allowed: np.ndarray) -> list[int]:
    """Options on the lower convex hull of (weight, loss), by increasing weight."""
    opts = sorted(np.nonzero(allowed)[0].tolist(), key=lambda o: (weights[o], loss[o]))
    hull: list[int] = []
    for o in opts:
        if hull and loss[o] >= loss[hull[-1]]:
            continue  # dominated: heavier and not better
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a→o: drop it
            if (loss[b] - loss[a]) * (weights[o] - weights[a]) >= \
                    (loss[o] - loss[a]) * (weights[b] - weights[a]):
                hull.pop()
            else:
                break
        if hull and weights[o] == weights[hull[-1]]:
            hull.pop()
        hull.append(o)
    return hull


def lagrangian_greedy(problem: Knapsack) -> Solution:
    """Feasible solution by hull upgrades in order of loss saved per unit of resource.

    With several resources the upgrades are ranked by their use summed over resources, each
    normalized by its capacity (a surrogate relaxation); an upgrade that does not fit is skipped.
    With one resource the LP relaxation's value, a lower bound, is returned as ``bound``.
    """
    start = time.perf_counter()
    check_capacity(problem)
    norm = (problem.weights / problem.caps[:, None, None]).sum(axis=0)
    n_genes = problem.loss.shape[0]
    hulls = [_hull(norm[g], problem.loss[g], problem.allowed[g]) for g in range(n_genes)]
    choices = np.array([h[0] for h in hulls])
    use = problem.weights[:, np.arange(n_genes), choices].sum(axis=1)
    steps = []
    for g, h in enumerate(hulls):
        for i in range(1, len(h)):
            dw = norm[g, h[i]] - norm[g, h[i - 1]]
            steps.append(((problem.loss[g, h[i]] - problem.loss[g, h[i - 1]]) / dw, g, i))
    steps.sort()
    blocked: set[int] = set()
    for _, g, i in steps:
        if g in blocked or choices[g] != hulls[g][i - 1]:
            continue
        new = hulls[g][i]
        delta = problem.weights[:, g, new] - problem.weights[:, g, choices[g]]
        if np.all(use + delta <= problem.caps):
            use = use + delta
            choices[g] = new
            continue
        blocked.add(g)
    _improve_(problem, choices)
    loss, use = problem.evaluate(choices)
    bound = _lp_value(problem, hulls, norm)[0] if len(problem.caps) == 1 else -np.inf
    optimal = bool(loss <= bound + 1e-12 * max(1.0, abs(bound)))
    return Solution(choices, loss, use, optimal, bound, time.perf_counter() - start,
                    "lagrangian-greedy")


def _lp_value(problem: Knapsack, hulls: list[list[int]], norm: np.ndarray) -> tuple[float, float]:
    """The LP relaxation (single resource): its value, by greedy with a fractional last upgrade,
    and its dual price ``λ`` (loss saved per unit of normalized resource at the margin)."""
    rows = np.arange(len(hulls))
    first = np.array([h[0] for h in hulls])
    value = float(problem.loss[rows, first].sum())
    room = 1.0 - float(norm[rows, first].sum())
    steps = sorted(((problem.loss[g, h[i]] - problem.loss[g, h[i - 1]]) /
                    (norm[g, h[i]] - norm[g, h[i - 1]]), g, i)
                   for g, h in enumerate(hulls) for i in range(1, len(h)))
    for eff, g, i in steps:
        if eff >= 0:
            break
        dw = norm[g, hulls[g][i]] - norm[g, hulls[g][i - 1]]
        if dw > room:
            return value + eff * room, -eff
        value += eff * dw
        room -= dw
    return value, 0.0


def reduce_by_reduced_costs(problem: Knapsack, upper: float) -> Knapsack:
    """Drop options that no solution better than ``upper`` can use (single resource).

    With the LP's dual price λ, an option's reduced cost is ``d + λw`` minus its gene's least
    ``d + λw``; any solution's loss is at least the LP bound plus its options' reduced costs, so
    an option whose reduced cost exceeds ``upper - bound`` cannot be in a better solution.
    Classic core-problem reduction for the multiple-choice knapsack (Pisinger 1995).
    """
    assert len(problem.caps) == 1
    norm = problem.weights[0] / problem.caps[0]
    hulls = [_hull(norm[g], problem.loss[g], problem.allowed[g])
             for g in range(problem.loss.shape[0])]
    bound, price = _lp_value(problem, hulls, norm)
    priced = np.where(problem.allowed, problem.loss + price * norm, np.inf)
    reduced = priced - priced.min(axis=1, keepdims=True)
    slack = upper - bound
    keep = reduced <= slack + 1e-12 * max(1.0, abs(upper))
    return Knapsack(np.where(keep, problem.loss, np.inf), problem.weights, problem.caps)


def _improve_(problem: Knapsack, choices: np.ndarray) -> None:
    """One pass of single-gene moves that lower the loss and still fit."""
    _, use = problem.evaluate(choices)
    for g in range(len(choices)):
        for o in np.argsort(problem.loss[g]):
            if not problem.allowed[g, o] or problem.loss[g, o] >= problem.loss[g, choices[g]]:
                break
            delta = problem.weights[:, g, o] - problem.weights[:, g, choices[g]]
            if np.all(use + delta <= problem.caps):
                use, choices[g] = use + delta, o
                break


# -- the exact program ---------------------------------------------------------------------------
def solve_milp(problem: Knapsack, time_limit: float | None = None,
               upper: float | None = None) -> Solution | None:
    """The proven optimum through HiGHS, or None when HiGHS found no solution in time.

    ``upper`` (a known solution's loss; else the Lagrangian greedy's) scales the objective so
    that HiGHS's absolute gap tolerance (1e-6) is a relative 1e-9 of the avoidable loss.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    start = time.perf_counter()
    check_capacity(problem)
    gene, option = np.nonzero(problem.allowed)
    best = np.where(problem.allowed, problem.loss, np.inf).min(axis=1)
    rel = problem.loss[gene, option] - best[gene]  # avoidable loss, >= 0
    if upper is None:
        upper = lagrangian_greedy(problem).loss
    scale = 1e3 / max(upper - float(best.sum()), 1e-300)
    n_genes, n = problem.loss.shape[0], gene.size
    one_each = LinearConstraint(csr_array((np.ones(n), (gene, np.arange(n))), shape=(n_genes, n)),
                                1, 1)
    # Rows in units of 1e-9 of the capacity: HiGHS's absolute feasibility tolerance (1e-7) then
    # admits an excess of 1e-16 of the budget, below what float arithmetic resolves.
    rows = problem.weights[:, gene, option] / problem.caps[:, None] * 1e9
    caps = np.full(len(problem.caps), 1e9)
    options = {"mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        options["time_limit"] = time_limit
    repaired = False
    for _ in range(_REPAIR_ROUNDS):
        res = milp(rel * scale, integrality=np.ones(n), bounds=Bounds(0, 1),
                   constraints=[one_each, LinearConstraint(rows, -np.inf, caps)], options=options)
        if res.x is None:
            return None
        picked = res.x > 0.5
        choices = np.empty(n_genes, dtype=int)
        choices[gene[picked]] = option[picked]
        over = (rows[:, picked].sum(axis=1) - 1e9) / 1e9
        if np.all(over <= 1e-12):
            loss, use = problem.evaluate(choices)
            optimal = res.status == 0 and not repaired  # a tightened cap proves nothing
            bound = float(best.sum() + (res.mip_dual_bound / scale if optimal else -np.inf))
            if optimal:
                bound = min(bound, loss)
            return Solution(choices, loss, use, optimal, bound, time.perf_counter() - start,
                            "milp-highs")
        caps = caps - (np.maximum(over, 0) + 1e-12) * 1e9
        repaired = True
    return None


def solve(problem: Knapsack, time_limit: float | None = None) -> Solution:
    """The MILP's proven optimum; the Lagrangian greedy solution when HiGHS does no better."""
    greedy = lagrangian_greedy(problem)
    if greedy.optimal:  # the LP bound is met: nothing for the MILP to prove
        return greedy
    core = problem
    if len(problem.caps) == 1:  # the greedy solution survives, so the core stays feasible
        core = reduce_by_reduced_costs(problem, greedy.loss)
    exact = solve_milp(core, time_limit, greedy.loss)
    if exact is None or exact.loss > greedy.loss:
        return greedy
    bound = max(exact.bound, greedy.bound)
    return Solution(exact.choices, exact.loss, exact.use, exact.optimal, bound,
                    exact.seconds + greedy.seconds, exact.method)


def pareto_sweep(problem: Knapsack, caps: Sequence[float] | np.ndarray, resource: int = 0,
                 time_limit: float | None = None) -> list[Solution]:
    """Optimal solutions with ``resource``'s capacity set to each of ``caps`` (the other
    capacities kept), reduced to the non-dominated set, by increasing use of ``resource``."""
    found: list[Solution] = []
    for cap in sorted(caps):
        limits = problem.caps.copy()
        limits[resource] = cap
        try:
            found.append(solve(problem.with_caps(limits), time_limit))
        except BudgetError:
            continue
    front: list[Solution] = []
    for s in sorted(found, key=lambda s: (s.use[resource], s.loss)):
        if not front or s.loss < front[-1].loss - 1e-15:
            front.append(s)
    return front
