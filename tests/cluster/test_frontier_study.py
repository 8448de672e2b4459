"""A frontier study end to end without Ray: the spec's list, the product's driver over a function,
the stored points, ``pareto``/``best`` per budget and a resumed frontier (a frontier below the
cheapest configuration: ``test_run_refuses.py``)."""

import json
import random

import pytest
from rich.console import Console

from mpsearch.cluster.cli.output import frontier_table
from mpsearch.cluster.driver import drive
from mpsearch.cluster.spec import parse_spec
from mpsearch.searcher import SearcherConfig, SerialExecutor
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.spaces.errors import SpecError
from mpsearch.storage import TrialStore

from .conftest import invoke

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))
_rng = random.Random(2)
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 128 * _rng.choice([1, 2, 4]), 128)
                     for i in range(8)], [LayerRule("blocks", OPTIONS)])
SENS = [random.Random(5).uniform(0.1, 10) for _ in SPACE.genes]
POINTS = parse_spec({"study": "f", "budget": {"avg_bits": [4.5, 3.5, 4.0]}}).budget


def objective(candidate):
    return sum(s * 2.0 ** -g.options[c].bits
               for s, g, c in zip(SENS, SPACE.genes, candidate.choices, strict=True))


def session(store, name, evaluations, **kwargs):
    study, _ = store.open_study(name, {"n": name}, {"n": name}, SPACE, "m", "o", evaluations,
                                budget=POINTS.to_budget(), frontier=POINTS.to_budgets())
    return drive(store, study, SearcherConfig(name="evolutionary", params={"offspring": 6}),
                 POINTS.to_budget(), lambda recorder: SerialExecutor(objective, slots=2),
                 frontier=study.frontier, **kwargs)


def test_the_spec_takes_a_list_for_any_one_budget_kind():
    assert POINTS.to_budgets() == tuple(Budget(b) for b in (3.5, 4.0, 4.5))
    assert POINTS.to_budget() == Budget(4.5)  # the loosest: what a feasible trial meets
    both = parse_spec({"study": "f", "budget": {"avg_bits": 4, "total_bytes": [2e6, 1e6]}}).budget
    assert both.to_budgets() == (Budget(4, 1e6), Budget(4, 2e6))
    assert parse_spec({"study": "f", "budget": {"avg_bits": 4}}).budget.to_budgets() == (Budget(4),)
    for budget, message in (({"avg_bits": [3, 4], "total_bytes": [1e6, 2e6]}, "only one budget"),
                            ({"avg_bits": []}, "at least one budget"),
                            ({"avg_bits": [3, -1]}, "'budget.avg_bits': entry 1: input should be "
                                                    "greater than 0, got -1")):
        with pytest.raises(SpecError, match=message):
            parse_spec({"study": "f", "budget": budget})


def test_frontier_study_stores_its_points_and_answers_every_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = TrialStore(url)
    result = session(store, "f", 120)
    assert result.stats.completed == 120
    study = TrialStore(url, create=False).study("f")
    assert study.frontier == POINTS.to_budgets() and study.budget == Budget(4.5)
    trials = store.trials("f")
    assert len({(t.choices, t.samples) for t in trials}) == len(trials)  # nothing twice
    bests = store.frontier("f")
    assert [b for b, _ in bests] == list(POINTS.to_budgets())
    for budget, best in bests:
        assert best is not None and best.avg_bits <= budget.avg_bits + 1e-9
        within = [t.objective for t in trials if t.feasible and t.avg_bits <= budget.avg_bits]
        assert best.objective == min(within)
    assert bests[0][1].objective > bests[-1][1].objective  # more bits, lower objective
    console = Console(width=220, record=True)
    console.print(frontier_table(study, bests))  # what `mpsearch run` prints after a frontier
    rows = [ln for ln in console.export_text().splitlines() if "avg_bits <=" in ln]
    assert [(b.describe() in ln, f" {t.number} " in ln) for (b, t), ln in zip(bests, rows,
            strict=True)] == [(True, True)] * 3

    front = json.loads(invoke("pareto", "--study", "f", "--db", url, "--json").stdout)
    marked = {p["trial"]: p["best_at"] for p in front if p["best_at"]}
    assert sorted(marked) == sorted({b.number for _, b in bests})
    assert "avg_bits <= 3.5" in marked[bests[0][1].number]
    table = invoke("pareto", "--study", "f", "--db", url).stdout
    assert "frontier avg_bits <= 3.5, avg_bits <= 4, avg_bits <= 4.5" in table
    for budget, best in bests:
        at = json.loads(invoke("best", "--study", "f", "--db", url, "--json", "--top", "1",
                               "--max-bits", str(budget.avg_bits)).stdout)
        assert at[0]["trial"] == best.number


def test_a_resumed_frontier_replays_exactly(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 'r.db'}")
    session(store, "whole", 90)
    session(store, "parts", 40)
    session(store, "parts", 40, extend=50)  # a second session replays the first's 40 trials
    assert ([t.choices for t in store.trials("whole")]
            == [t.choices for t in store.trials("parts")])

