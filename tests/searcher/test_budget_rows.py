"""A budget of several additive rows: every strategy meets each, the program finds the optimum."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.searcher import SEARCHERS, SearchContext, SearcherConfig, make_searcher
from mpsearch.searcher.ip_searcher import IntegerProgramParams, IntegerProgramSearcher, knapsack_for
from mpsearch.spaces.budget import Constraint
from mpsearch.spaces.errors import BudgetError, SpecError
from mpsearch.spaces.space import Budget, Candidate

PARAMS = {"hybrid": {"seeds": 2}, "integer-program": {"solutions": 3}}


def _row(space, seed: int, limit: float) -> Constraint:
    """A 'latency'-like row that does not follow the stored bits: per (gene, option) a random
    cost, the 8-bit option dearest (as dequantize + matmul would be), plus a constant."""
    rng = np.random.default_rng(seed)
    costs = []
    for g in space.genes:
        c = rng.uniform(0.5, 1.5, size=len(g.options)) * g.numel / 1e4
        c[[o.bits for o in g.options].index(8)] *= 3
        costs.append(tuple(float(v) for v in c))
    return Constraint("latency", tuple(costs), 2.0, limit, "ms")


def _budget(space, fraction: float) -> Budget:
    row = _row(space, 5, 0.0)
    least, most = row.least(), row.value_of(sum(max(c) for c in row.costs))
    return Budget(avg_bits=4.5, extra=(Constraint(
        "latency", row.costs, row.constant, least + fraction * (most - least), "ms"),))


def test_rows_of_the_bit_bounds_match_the_cost_model(synthetic):
    space = synthetic.make_space(7, seed=3)
    budget = Budget(avg_bits=4.0, total_bytes=9e4)
    rows = space.constraints(budget)
    assert [r.name for r in rows] == ["avg_bits", "total_bytes"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = Candidate(tuple(int(rng.integers(n)) for n in space.sizes))
        cost = space.cost(c)
        assert rows[0].value(c.choices) == cost.avg_bits  # bit for bit: one way to sum
        assert rows[1].value(c.choices) == cost.total_bytes
        assert space.feasible(c, budget) == budget.admits(cost)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_strategy_meets_every_row(synthetic, name):
    space = synthetic.make_space(8, seed=4)
    budget = _budget(space, 0.35)
    f = synthetic.Additive(space, seed=4)
    searcher = make_searcher(SearcherConfig(name=name, params=PARAMS.get(name, {})), space,
                             budget, 1, SearchContext(study=f"rows-{name}"))
    rec = synthetic.run(searcher, f, 80, slots=2)
    proposed = [t for t in rec.trials if not (t["candidate"].origin.endswith(":probe")
                                              or t["candidate"].origin == "uniform")]
    assert proposed or name == "uniform", name  # uniform proposes its baselines only
    latency = budget.extra[0]
    for t in proposed:
        c = t["candidate"]
        assert t["feasible"] and latency.admits(c.choices), f"{name} proposed {c} over a row"
        assert space.cost(c).avg_bits <= 4.5 + 1e-9


def test_the_program_finds_the_optimum_under_both_rows(synthetic):
    space = synthetic.make_space(6, seed=1)
    budget = _budget(space, 0.15)
    f = synthetic.Additive(space, seed=1)
    best, arg = synthetic.brute_force(space, budget, f)
    bits_only, _ = synthetic.brute_force(space, Budget(avg_bits=4.5), f)
    assert best > bits_only + 1e-9  # the latency row binds: the test can tell the rows apart
    assert knapsack_for(space, budget, np.zeros((6, 5))).caps.shape == (2,)
    searcher = IntegerProgramSearcher(space, budget, 0, IntegerProgramParams())
    rec = synthetic.run(searcher, f, 100)
    assert rec.trials[-1]["candidate"].origin == "integer-program:0"
    assert rec.trials[-1]["objective"] == pytest.approx(best, abs=1e-12)


def test_proportional_rows_stay_one_resource(synthetic):
    space = synthetic.make_space(5, seed=2)
    problem = knapsack_for(space, Budget(avg_bits=4.0, total_bytes=5e3), np.zeros((5, 5)))
    assert problem.caps.shape == (1,)
    assert problem.caps[0] == min(4.0 * space.searched_params, 8 * 5e3)


def test_a_row_below_its_least_and_dp_with_two_rows_are_refused(synthetic):
    space = synthetic.make_space(5, seed=2)
    row = _row(space, 5, 0.0)
    low = Budget(avg_bits=8.0, extra=(Constraint("latency", row.costs, 2.0, row.least() * 0.9,
                                                 "ms"),))
    with pytest.raises(BudgetError, match=f"latency: .* below the smallest configuration of the "
                                          f"space \\({row.least():.6g} ms\\)"):
        space.check_budget(low)
    with pytest.raises(SpecError, match="solver: dp solves one resource.*use solver: milp"):
        IntegerProgramSearcher(space, _budget(space, 0.5), 0, IntegerProgramParams(solver="dp"))
