"""Uniform, random and evolutionary searchers and the loop, on synthetic objectives (no Ray)."""

import random

import pytest

from mpsearch.searcher import (
    EvolutionarySearcher,
    RandomSearcher,
    SearcherConfig,
    SerialExecutor,
    UniformSearcher,
    make_searcher,
    run_search,
)
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces import Budget, LayerInfo, LayerRule, SpecError, build_space, parse_option

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))


def make_space(n_layers=12, seed=0):
    rng = random.Random(seed)
    layers = [LayerInfo(f"blocks.{i}.fc", 128 * rng.choice([1, 2, 4]), 128 * rng.choice([1, 2, 3]))
              for i in range(n_layers)]
    return build_space(layers, [LayerRule("blocks", OPTIONS)], (), None)


def additive_objective(space, seed=0):
    """Each layer loses 2^-bits × a layer-specific sensitivity: the optimum is non-uniform."""
    rng = random.Random(seed)
    sens = [rng.uniform(0.1, 10) for _ in space.genes]

    def f(candidate):
        return sum(s * 2.0 ** -g.options[c].bits for s, g, c in
                   zip(sens, space.genes, candidate.choices, strict=True))
    return f


class ListRecorder:
    def __init__(self):
        self.rows = {}

    def start(self, candidate, cost, feasible):
        key = len(self.rows)
        self.rows[key] = [candidate, feasible, None]
        return key

    def finish(self, key, candidate, outcome: Outcome):
        assert self.rows[key][2] is None, "a trial is finished once"
        self.rows[key][2] = outcome.objective


def run(searcher, objective, evaluations, slots=2):
    rec = ListRecorder()
    stats = run_search(searcher, SerialExecutor(objective, slots), rec, evaluations,
                       searcher.space, searcher.budget)
    return stats, rec


BUDGET = Budget(avg_bits=4.25)


def test_uniform_searcher_proposes_each_common_option_once():
    space = make_space()
    s = UniformSearcher(space, BUDGET)
    got = s.ask(10)
    assert [space.decode(c)["blocks.0.fc"].label for c in got] == [o.label for o in OPTIONS]
    assert s.finished and s.ask(1) == []
    feasible_only = UniformSearcher(space, BUDGET, params=UniformSearcher.Params(
        include_infeasible=False))
    assert len(feasible_only.ask(10)) == 3  # 2, 3 and 4 bits fit 4.25


@pytest.mark.parametrize("cls", [RandomSearcher, EvolutionarySearcher])
def test_never_over_budget_and_deterministic(cls):
    space = make_space()
    f = additive_objective(space)
    first = run(cls(space, BUDGET, seed=3), f, 120)[1]
    again = run(cls(space, BUDGET, seed=3), f, 120)[1]
    other = run(cls(space, BUDGET, seed=4), f, 120)[1]
    assert all(feasible for _, feasible, _ in first.rows.values())
    assert all(space.cost(c).avg_bits <= 4.25 + 1e-9 for c, _, _ in first.rows.values())
    assert [r[0] for r in first.rows.values()] == [r[0] for r in again.rows.values()]
    assert [r[0] for r in first.rows.values()] != [r[0] for r in other.rows.values()]


def test_evolution_is_independent_of_result_order():
    """Selection waits for the whole generation, so slots and arrival order don't matter."""
    space = make_space()
    f = additive_objective(space)
    one = run(EvolutionarySearcher(space, BUDGET, seed=1), f, 100, slots=1)[1]
    four = run(EvolutionarySearcher(space, BUDGET, seed=1), f, 100, slots=4)[1]
    assert [r[0] for r in one.rows.values()] == [r[0] for r in four.rows.values()]


def test_evolution_beats_uniform_and_random_on_an_additive_objective():
    space = make_space(n_layers=16)
    f = additive_objective(space)
    cfg = SearcherConfig(name="evolutionary")
    stats_evo, _ = run(make_searcher(cfg, space, BUDGET, seed=0), f, 300)
    stats_rnd, _ = run(make_searcher(SearcherConfig(name="random"), space, BUDGET, 0), f, 300)
    uniform4 = f(space.uniform(OPTIONS[2]))
    assert stats_evo.best < uniform4  # starts from the best baseline and improves on it
    assert stats_evo.best < stats_rnd.best


def test_loop_runs_exactly_the_requested_evaluations_and_counts_failures_apart():
    space = make_space()
    calls = []

    def flaky(c):
        calls.append(c)
        return None if len(calls) % 5 == 0 else 1.0  # every fifth evaluation fails

    stats, rec = run(RandomSearcher(space, BUDGET, seed=0), flaky, 40)
    assert stats.completed == 40 and stats.failed == len(calls) - 40 > 0
    assert stats.stopped_because == "evaluation budget reached"
    assert sum(r[2] is None for r in rec.rows.values()) == stats.failed  # recorded, not lost


def test_loop_stops_when_the_searcher_runs_dry():
    space = make_space()
    stats, rec = run(UniformSearcher(space, BUDGET), lambda c: 0.5, 50)
    assert stats.completed == len(OPTIONS) == len(rec.rows)
    assert stats.stopped_because == "searcher has nothing more to propose"


def test_best_ignores_over_budget_baselines():
    space = make_space()
    s = make_searcher(SearcherConfig(name="evolutionary"), space, BUDGET, 0)
    stats, rec = run(s, lambda c: space.cost(c).avg_bits * -1.0, 30)  # cheaper scores worse
    feasible_best = min(o for _, feas, o in rec.rows.values() if feas)
    assert stats.best == feasible_best > -16


def test_unknown_strategy_and_parameter_are_named():
    valid = "evolutionary, evolutionary-population, hybrid, integer-program, optuna, random, uniform"
    with pytest.raises(SpecError, match=f"unknown strategy 'genetic'; valid: {valid}"):
        SearcherConfig(name="genetic").check()
    with pytest.raises(SpecError, match=r"searcher\.params\.lambda_.*offspring, max_switches"):
        SearcherConfig(name="evolutionary", params={"lambda_": 8}).check()
