"""Level moves over spaces with several formats at one cost, and the window around a budget."""

from __future__ import annotations

import random

from mpsearch.searcher import SearcherConfig, make_searcher
from mpsearch.searcher.levels import LevelMap, budget_window, fill_up, repair_down
from mpsearch.spaces.budget import Constraint
from mpsearch.spaces.space import Budget, Candidate
from mpsearch.spaces.spec import parse_option

# Two formats per width at 3.25 and 4.25 bits (RTN and GPTQ; nf4 beside int4-g128), fp16 alone.
FORMATS = tuple(parse_option(x) for x in [
    "int2-g128-asym", "int3-g128-asym", "int3-g128-asym-gptq", "int4-g128-asym",
    "int4-g128-asym-gptq", "nf4", "int5-g128-asym", "fp16"])


def bits_per_weight(space, g, o):
    return space.gene_bits(g, o) / space.genes[g].numel


def test_tiers_group_equal_costs_and_every_move_changes_the_cost(synthetic):
    space = synthetic.make_space(10, seed=3, options=FORMATS)
    levels = LevelMap(space)
    assert [len(t) for t in levels.tiers[0]] == [1, 2, 3, 1, 1]  # int2 | int3×2 | int4,nf4 | ...
    rng = random.Random(0)
    budget = Budget(avg_bits=4.25)
    for _ in range(20):
        choices = list(space.cheapest().choices)
        fill_up(choices, levels, budget, rng)
        assert space.feasible(Candidate(tuple(choices)), budget)
        # spending the slack stops only when no gene can go up a tier within budget
        cost = space.cost(Candidate(tuple(choices))).avg_bits
        for g, c in enumerate(choices):
            if levels.can_move(g, c, 1):
                up = levels.move(g, c, 1, rng)
                extra = space.gene_bits(g, up) - space.gene_bits(g, c)
                assert extra > 0
                assert cost + extra / space.searched_params > 4.25 + 1e-9
    top = [levels.option(g, levels.top(g)) for g in range(len(space.genes))]
    assert repair_down(top, levels, budget, rng)
    assert {space.genes[0].options[o].label for o in levels.tiers[0][2]} == {"int4-g128-asym",
                                                                              "int4-g128-asym-gptq", "nf4"}


def test_evolution_moves_on_when_the_best_uniform_shares_its_tier(synthetic):
    """The best uniform baseline sits in a tier of three formats, at the budget: evolution must
    still find offspring (it used to walk every gene through the tier's formats and stop)."""
    space = synthetic.transformer_space(2, options=FORMATS)
    f = synthetic.Additive(space, seed=4, interaction=0.0)
    budget = Budget(avg_bits=4.25)
    searcher = make_searcher(SearcherConfig(name="evolutionary"), space, budget, 0)
    rec = synthetic.run(searcher, f, 120)
    assert len(rec.trials) == 120
    uniform_best = min(f(space.uniform(o)) for o in space.uniform_options()
                       if space.feasible(space.uniform(o), budget))
    assert rec.best()[0] < 0.9 * uniform_best


def test_budget_window_holds_the_tiers_around_the_budget(synthetic):
    space = synthetic.make_space(6, seed=5, options=FORMATS)
    labels = [{space.genes[g].options[o].label for o in w}
              for g, w in enumerate(budget_window(space, Budget(avg_bits=4.25), 1))]
    assert labels[0] == {"int3-g128-asym", "int3-g128-asym-gptq", "int4-g128-asym",
                         "int4-g128-asym-gptq", "nf4", "int5-g128-asym"}
    # a bytes budget with the same room gives the same window
    room = space.cost_of_bits(4.25 * space.searched_params).total_bytes
    assert budget_window(space, Budget(total_bytes=room), 1) == budget_window(
        space, Budget(avg_bits=4.25), 1)
    # 3.0 bits: nearest tier is 3.25, over budget alone, so the window widens down to int2
    narrow = budget_window(space, Budget(avg_bits=3.0), 0)
    assert {bits_per_weight(space, 0, o) for o in narrow[0]} == {2.25, 3.25}


def test_a_repair_for_a_row_that_does_not_fall_with_the_bits_keeps_to_the_allowed_options(synthetic):
    """A latency-like row where fp16 is the fastest option and int2 the slowest: from int4
    everywhere, over the row, only a move to fp16 lowers it. With fp16 outside the map's options
    (an Optuna study's window) the repair fails rather than leave them (Optuna refuses a value
    outside the study's choices)."""
    options = tuple(parse_option(x) for x in ["int2-g128-asym", "int4-g128-asym", "fp16"])
    space = synthetic.make_space(4, seed=1, options=options)
    ms = {"int2-g128-asym": 3.0, "int4-g128-asym": 2.0, "fp16": 1.0}
    costs = tuple(tuple(ms[o.label] for o in g.options) for g in space.genes)
    budget = Budget(avg_bits=16.0, extra=(Constraint("latency", costs, 0.0, 7.5, "ms"),))
    int4 = [[o.label for o in g.options].index("int4-g128-asym") for g in space.genes]
    fp16 = [[o.label for o in g.options].index("fp16") for g in space.genes]
    narrow = LevelMap(space, [{o for o in range(3) if o != f} for f in fp16])
    choices = list(int4)
    assert not repair_down(choices, narrow, budget, random.Random(0))
    assert all(c != f for c, f in zip(choices, fp16, strict=True))
    choices = list(int4)  # with every option allowed, the move to fp16 repairs it
    assert repair_down(choices, LevelMap(space), budget, random.Random(0))
    assert space.feasible(Candidate(tuple(choices)), budget) and set(choices) & set(fp16)
