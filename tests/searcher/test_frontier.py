"""A frontier in one study (``searcher/frontier.py``): every budget searched at once, sharing every
evaluation, through the real loop on synthetic objectives with a known optimum."""

from collections import Counter

import pytest

from mpsearch.searcher import FrontierSearcher, SearcherConfig, make_searcher
from mpsearch.spaces.space import Budget

BUDGETS = (Budget(avg_bits=3.0), Budget(avg_bits=3.5), Budget(avg_bits=4.0), Budget(avg_bits=4.5))


def dispatched(rec):
    return Counter((t["candidate"].choices, t["candidate"].samples) for t in rec.trials)


def best_at(rec, space, budget):
    done = [t["objective"] for t in rec.trials if t["objective"] is not None
            and t["candidate"].samples is None and space.feasible(t["candidate"], budget)]
    return min(done)


def frontier(config, space, seed=0):
    return make_searcher(config, space, BUDGETS[-1], seed, frontier=BUDGETS)


def test_integer_program_frontier_matches_four_studies_with_one_profile(synthetic):
    space = synthetic.make_space(6, seed=3)
    f = synthetic.Additive(space, seed=3)
    config = SearcherConfig(name="integer-program")
    alone = [synthetic.run(make_searcher(config, space, b, 0), f, 400) for b in BUDGETS]
    together = synthetic.run(frontier(config, space), f, 400)
    for budget, rec in zip(BUDGETS, alone, strict=True):
        optimum, _ = synthetic.brute_force(space, budget, f)
        assert best_at(rec, space, budget) == pytest.approx(optimum)
        assert best_at(together, space, budget) == pytest.approx(optimum)
    # The baselines and the single-gene probes are measured once, not once per budget.
    probes = sum(len(g.options) - 1 for g in space.genes)
    assert len(together.trials) < sum(len(r.trials) for r in alone) - 3 * probes
    assert max(dispatched(together).values()) == 1


def test_evolutionary_frontier_beats_the_baselines_at_every_budget_and_never_repeats(synthetic):
    space = synthetic.transformer_space(2, options=synthetic.DENSE)
    f = synthetic.Additive(space, seed=5)
    config = SearcherConfig(name="evolutionary", params={"offspring": 8})
    rec = synthetic.run(frontier(config, space), f, 240, slots=3)
    assert len(rec.trials) == 240 and max(dispatched(rec).values()) == 1
    uniform = [t for t in rec.trials if t["candidate"].origin == "uniform"]
    assert len(uniform) == len(space.uniform_options())  # once for the whole frontier
    for budget in BUDGETS:
        baseline = min(t["objective"] for t in uniform if space.feasible(t["candidate"], budget))
        assert best_at(rec, space, budget) < 0.9 * baseline, budget
    # Each point's strategy got a share: the tightest budget's best is strictly within it and
    # the loosest's uses more bits.
    costs = {b.avg_bits: min((t for t in rec.trials if t["objective"] is not None
                              and space.feasible(t["candidate"], b)),
                             key=lambda t: t["objective"]) for b in BUDGETS}
    assert space.cost(costs[3.0]["candidate"]).avg_bits <= 3.0 + 1e-9
    assert space.cost(costs[4.5]["candidate"]).avg_bits > 4.0


def test_frontier_is_deterministic_for_a_seed(synthetic):
    space = synthetic.make_space(6, seed=1)
    f = synthetic.Additive(space, seed=1)
    config = SearcherConfig(name="evolutionary", params={"offspring": 4})
    runs = [[t["candidate"].choices for t in synthetic.run(frontier(config, space), f, 60).trials]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_one_budget_is_no_frontier(synthetic):
    space = synthetic.make_space(4)
    config = SearcherConfig(name="evolutionary")
    built = make_searcher(config, space, BUDGETS[0], 0, frontier=BUDGETS[:1])
    assert not any(isinstance(s, FrontierSearcher) for s in built.stages)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_point_beside_a_tighter_one_does_as_well_as_a_study_of_its_own(synthetic, seed):
    """A configuration that fits 3.5 bits is the 3.5 point's: told to the 4-bit point, its
    evolution adopted it and filled the slack at random, and ended 6-8 % worse than alone."""
    space = synthetic.transformer_space(4, options=synthetic.DENSE)
    f = synthetic.Additive(space, seed=seed, interaction=0.002)
    config = SearcherConfig(name="evolutionary")
    alone = synthetic.run(make_searcher(config, space, BUDGETS[2], seed), f, 150)
    pair = BUDGETS[1:3]
    together = synthetic.run(make_searcher(config, space, pair[-1], seed, frontier=pair), f, 300)
    assert best_at(together, space, BUDGETS[2]) <= best_at(alone, space, BUDGETS[2])
    assert best_at(together, space, BUDGETS[1]) <= best_at(
        synthetic.run(make_searcher(config, space, BUDGETS[1], seed), f, 150), space, BUDGETS[1])
