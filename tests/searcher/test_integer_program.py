"""The knapsack solvers against brute force, and the integer-programming strategy end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpsearch.searcher import (
    IntegerProgramSearcher,
    Knapsack,
    SearchContext,
    dp_frontier,
    lagrangian_greedy,
    pareto_sweep,
    solve,
    solve_dp,
    solve_milp,
)
from mpsearch.searcher.ip_searcher import IntegerProgramParams
from mpsearch.spaces.errors import BudgetError, SpecError
from mpsearch.spaces.space import Budget


def _brute(problem: Knapsack) -> float:
    best = np.inf
    for c in itertools.product(*(np.nonzero(row)[0] for row in problem.allowed)):
        if problem.fits(np.array(c)):
            best = min(best, problem.evaluate(np.array(c))[0])
    return best


def _random_problem(rng, genes=6, options=4, resources=1) -> Knapsack:
    w = rng.integers(1, 30, size=(resources, genes, options)).astype(float) * 64
    loss = rng.random((genes, options))
    loss[rng.random((genes, options)) < 0.15] = np.inf
    loss[:, 0] = rng.random(genes)  # every gene keeps an option
    caps = w.min(axis=2).sum(axis=1) + rng.uniform(0.2, 0.8) * (w.max(axis=2) - w.min(axis=2)).sum(axis=1)
    return Knapsack(loss, w, caps)


@pytest.mark.parametrize("seed", range(12))
def test_solvers_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    one = _random_problem(rng)
    two = _random_problem(rng, resources=2)
    best1, best2 = _brute(one), _brute(two)
    for s in (solve(one), solve_milp(one), solve_dp(one)):
        assert s.optimal and s.loss == pytest.approx(best1, abs=1e-12) and one.fits(s.choices)
    exact = solve(two)
    assert exact.optimal and exact.loss == pytest.approx(best2, abs=1e-12) and two.fits(exact.choices)
    greedy = lagrangian_greedy(one)
    assert one.fits(greedy.choices) and greedy.bound <= best1 + 1e-12 <= greedy.loss + 2e-12


def test_sweep_and_frontier_are_pareto_fronts():
    rng = np.random.default_rng(7)
    problem = _random_problem(rng, genes=8)
    caps = np.linspace(problem.caps[0] * 0.6, problem.caps[0], 12)
    for front in (pareto_sweep(problem, caps), dp_frontier(problem, caps)):
        assert front
        uses = [s.use[0] for s in front]
        losses = [s.loss for s in front]
        assert uses == sorted(uses) and losses == sorted(losses, reverse=True)
        for s in front:  # each point is the optimum at its own use
            assert s.loss == pytest.approx(_brute(problem.with_caps([s.use[0]])), abs=1e-12)


def test_infeasible_budget_is_reported():
    problem = Knapsack(np.zeros((2, 2)), np.ones((1, 2, 2)), np.array([1.0]))
    with pytest.raises(BudgetError, match="capacity"):
        solve(problem)


@pytest.mark.parametrize("solver", ["milp", "dp"])
def test_strategy_returns_the_brute_force_optimum(synthetic, solver):
    space = synthetic.make_space(6, seed=1)
    f = synthetic.Additive(space, seed=1)
    budget = Budget(avg_bits=4.5)
    best, _ = synthetic.brute_force(space, budget, f)
    searcher = IntegerProgramSearcher(space, budget, 0, IntegerProgramParams(solver=solver))
    rec = synthetic.run(searcher, f, 100)
    probes = [t for t in rec.trials if t["candidate"].origin.endswith(":probe")]
    assert len(probes) == 1 + 6 * 4  # the base, then every gene at every other option
    assert rec.trials[-1]["candidate"].origin == "integer-program:0"
    assert rec.trials[-1]["objective"] == pytest.approx(best, abs=1e-12)
    assert searcher.finished


def test_given_profile_is_used_and_missing_entries_are_measured(synthetic):
    space = synthetic.make_space(5, seed=2)
    f = synthetic.Additive(space, seed=2)
    budget = Budget(avg_bits=4.0)
    full = {(g, o): float(f.d[g, o]) for g in range(5) for o in range(4)}
    partial = {(space.genes[g].name, space.genes[g].options[o].label): v
               for (g, o), v in full.items() if g != 3}  # gene 3 is missing
    searcher = IntegerProgramSearcher(space, budget, 0, context=SearchContext(profile=partial))
    rec = synthetic.run(searcher, f, 50)
    probes = [t["candidate"] for t in rec.trials if t["candidate"].origin.endswith(":probe")]
    assert len(probes) == 1 + 4 and all(c.choices[3] != 4 or c.choices == (4,) * 5 for c in probes)
    best, _ = synthetic.brute_force(space, budget, f)
    assert rec.best()[0] == pytest.approx(best, abs=1e-12)


def test_sweep_proposes_distinct_feasible_solutions(synthetic):
    space = synthetic.make_space(12, seed=3)
    f = synthetic.Additive(space, seed=3)
    budget = Budget(avg_bits=3.5)
    searcher = IntegerProgramSearcher(space, budget, 0,
                                      IntegerProgramParams(solutions=4, sweep=0.2,
                                                           profile_options=["int2-g128-asym",
                                                                            "int3-g128-asym",
                                                                            "int4-g128-asym"]))
    rec = synthetic.run(searcher, f, 200)
    sols = [t for t in rec.trials if not t["candidate"].origin.endswith(":probe")]
    assert 2 <= len(sols) <= 4 and all(t["feasible"] for t in sols)
    assert len({t["candidate"].choices for t in sols}) == len(sols)
    assert sols[0]["objective"] == min(t["objective"] for t in sols)


def test_proxy_measures_one_probe_per_gene_and_scales_the_rest(synthetic):
    """A proxy proportional to each gene's true deltas (the scale unknown to it) and a probe of
    the option nearest the budget give the whole profile: the brute-force optimum, 1 + n probes."""
    space = synthetic.make_space(6, seed=4)
    f = synthetic.Additive(space, seed=4)
    budget = Budget(avg_bits=3.5)
    rng = np.random.default_rng(4)
    layer_gain = rng.lognormal(0, 2, size=6)  # what the proxy cannot know
    proxy = {(space.genes[g].name, space.genes[g].options[o].label): float(f.d[g, o] / layer_gain[g])
             for g in range(6) for o in range(4)}
    searcher = IntegerProgramSearcher(space, budget, 0, IntegerProgramParams(proxy=True),
                                      SearchContext(proxy=proxy))
    rec = synthetic.run(searcher, f, 50)
    probes = [t["candidate"] for t in rec.trials if t["candidate"].origin.endswith(":probe")]
    anchors = {space.genes[g].options[c.choices[g]].bits for c in probes[1:]
               for g in range(6) if c.choices[g] != 4}
    assert len(probes) == 1 + 6 and anchors == {3}  # int3: the level nearest 3.5 bits
    best, _ = synthetic.brute_force(space, budget, f)
    assert rec.best()[0] == pytest.approx(best, rel=1e-9)


def test_proxy_without_proxies_is_refused(synthetic):
    space = synthetic.make_space(3, seed=5)
    with pytest.raises(SpecError, match="proxy"):
        IntegerProgramSearcher(space, Budget(avg_bits=3.5), 0, IntegerProgramParams(proxy=True))


def test_fisher_proxy_without_anchors_is_the_profile_and_needs_no_probe(synthetic):
    """``proxy: fisher, anchors: false``: the proxy is taken as each option's delta (its values
    are on the objective's scale), so the program's optimum is the first evaluation."""
    space = synthetic.make_space(6, seed=6)
    f = synthetic.Additive(space, seed=6)
    budget = Budget(avg_bits=3.5)
    proxy = {(space.genes[g].name, space.genes[g].options[o].label): float(f.d[g, o])
             for g in range(6) for o in range(4)}
    params = IntegerProgramParams(proxy="fisher", anchors=False)
    assert IntegerProgramSearcher.needs(params).proxy_kind == "fisher"
    searcher = IntegerProgramSearcher(space, budget, 0, params, SearchContext(proxy=proxy))
    rec = synthetic.run(searcher, f, 50)
    assert not [t for t in rec.trials if t["candidate"].origin.endswith(":probe")]
    assert len(rec.trials) == 1
    best, _ = synthetic.brute_force(space, budget, f)
    assert rec.best()[0] == pytest.approx(best, rel=1e-9)


def test_anchors_off_needs_the_fisher_proxy():
    with pytest.raises(ValueError, match="anchors: false needs proxy: fisher or kfac"):
        IntegerProgramParams(proxy=True, anchors=False)
    assert IntegerProgramParams(proxy=True).proxy_kind == "hessian"
    assert IntegerProgramParams().proxy_kind is None
