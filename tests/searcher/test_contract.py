"""What every strategy owes the loop: determinism, budget, clear errors, a light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpsearch.searcher import SEARCHERS, SearchContext, SearcherConfig, make_searcher, searcher_class
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Budget

BUDGET = Budget(avg_bits=3.5)
PARAMS = {"hybrid": {"seeds": 2}, "integer-program": {"solutions": 3}}


def _build(name, space, seed, tmp_path=None):
    config = SearcherConfig(name=name, params=PARAMS.get(name, {}))
    return make_searcher(config, space, BUDGET, seed, SearchContext(study=f"s-{name}-{seed}"))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_deterministic_and_never_over_budget(synthetic, name):
    space = synthetic.make_space(10, seed=8)
    f = synthetic.Additive(space, seed=8)
    runs = [synthetic.run(_build(name, space, 3), f, 150, slots=3) for _ in range(2)]
    seqs = [[t["candidate"].choices for t in r.trials] for r in runs]
    assert seqs[0] == seqs[1]
    for t in runs[0].trials:
        c = t["candidate"]
        measurement = c.origin.endswith(":probe") or c.origin == "uniform"
        assert t["feasible"] or measurement, f"{name} proposed {c} over budget"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(SpecError, match="valid: .*evolutionary.*hybrid.*integer-program.*optuna"):
        searcher_class("annealing")
    with pytest.raises(SpecError, match=r"searcher.params.nope.*\(parameters of 'optuna': sampler"):
        SearcherConfig(name="optuna", params={"nope": 1}).check()
    with pytest.raises(SpecError, match="searcher.params.sampler"):
        SearcherConfig(name="optuna", params={"sampler": "cma"}).check()


def test_infeasible_budget_is_refused_before_any_evaluation(synthetic):
    from mpsearch.spaces.errors import BudgetError

    space = synthetic.make_space(4)
    for name in ("integer-program", "hybrid"):
        with pytest.raises(BudgetError, match="below the cheapest"):
            make_searcher(SearcherConfig(name=name), space, Budget(avg_bits=1.0), 0)


def test_import_loads_neither_torch_ray_nor_optuna():
    code = ("import sys, mpsearch.searcher; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


FRONTIER = (Budget(avg_bits=3.0), Budget(avg_bits=3.5), Budget(avg_bits=4.0))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_strategy_runs_a_frontier_deterministically_without_repeats(synthetic, name):
    space = synthetic.make_space(10, seed=8)
    f = synthetic.Additive(space, seed=8)
    config = SearcherConfig(name=name, params=PARAMS.get(name, {}))

    def build():
        return make_searcher(config, space, FRONTIER[-1], 3, SearchContext(study=f"f-{name}"),
                             frontier=FRONTIER)

    runs = [synthetic.run(build(), f, 120, slots=3) for _ in range(2)]
    seqs = [[(t["candidate"].choices, t["candidate"].samples) for t in r.trials] for r in runs]
    assert seqs[0] == seqs[1] and len(set(seqs[0])) == len(seqs[0])
    for t in runs[0].trials:
        c = t["candidate"]
        measurement = c.origin.endswith(":probe") or c.origin == "uniform"
        assert t["feasible"] or measurement, f"{name} proposed {c} over every budget"
    if name != "uniform":  # every point got a configuration within it
        for budget in FRONTIER:
            assert any(space.feasible(t["candidate"], budget) and t["objective"] is not None
                       and t["candidate"].origin != "uniform" for t in runs[0].trials), budget
