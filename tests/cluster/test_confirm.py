"""Confirmation (``searcher.confirm``): the top configurations re-scored on every sample after the
search, the figure stored on their trials, ``best`` ranking by it; a resumed study does not
evaluate them again. The product's driver over a synthetic executor, SQLite store."""

import random

from mpsearch.cluster.confirm import CONFIRM_ORIGIN
from mpsearch.cluster.driver import drive
from mpsearch.searcher import SearcherConfig
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import COMPLETE, TrialStore

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 256, 128) for i in range(8)],
                    [LayerRule("blocks", OPTIONS)], (), None)
BUDGET = Budget(avg_bits=4.25)


def true_value(choices):
    return sum((i + 1) * 2.0 ** -SPACE.genes[i].options[c].bits for i, c in enumerate(choices))


def score(candidate):
    """All samples: the true value. Few samples: it plus a per-configuration error of up to
    ±30 %, so the lowest screened figures are the luckiest, not the best."""
    value = true_value(candidate.choices)
    if candidate.samples is None:
        return value
    return value * (1 + random.Random(hash(candidate.choices)).uniform(-0.3, 0.3))


class Serial:
    slots = 2

    def __init__(self):
        self.pending, self.calls = [], 0

    def submit(self, key, candidate):
        self.pending.append((key, candidate))

    def collect(self):
        done, self.pending = self.pending, []
        self.calls += len(done)
        return [(key, Outcome(score(c), 0.0, "w")) for key, c in done]

    def shutdown(self):
        pass


def session(store, evaluations=40):
    # every offspring screened on 2 samples only: the search never scores one on all of them
    config = SearcherConfig(name="evolutionary", confirm=3,
                            params={"selection": [[6, 2]]})
    study, _ = store.open_study("c", {"n": 1}, {"n": 1}, SPACE, "m", "o", evaluations)
    executor = Serial()
    drive(store, study, config, BUDGET, lambda recorder: executor, optuna_mirror=False)
    return executor


def test_the_top_configurations_are_confirmed_and_best_ranks_by_it(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    executor = session(store)
    trials = store.trials("c")
    searched = [t for t in trials if t.origin != CONFIRM_ORIGIN]
    screened = [t for t in searched if t.feasible and t.status == COMPLETE]
    top = sorted({t.choices for t in screened},
                 key=lambda c: min(t.objective for t in screened if t.choices == c))[:3]
    for choices in top:
        rows = [t for t in trials if t.choices == choices]
        assert all(t.confirmed == true_value(choices) for t in rows), rows
    confirms = [t for t in trials if t.origin == CONFIRM_ORIGIN]
    # those screened only were scored again on every sample; a baseline already was
    assert confirms and all(t.samples is None for t in confirms)
    assert len(confirms) == sum(not any(t.samples is None for t in searched if t.choices == c)
                                for c in top)
    assert executor.calls == 40 + len(confirms)
    best = store.best("c", top=10)
    confirmed = [t for t in best if t.confirmed is not None]
    assert best[:len(confirmed)] == confirmed  # confirmed trials first, by their figure
    assert [t.confirmed for t in confirmed] == sorted(t.confirmed for t in confirmed)
    assert best[0].confirmed == min(true_value(c) for c in top)
    # the screened winner is among those confirmed: what best names is at least as good
    assert best[0].confirmed <= true_value(min(screened, key=lambda t: t.objective).choices)
    # resumed: nothing is evaluated again
    assert session(store).calls == 0
    assert len(store.trials("c")) == len(trials)


def test_best_shows_the_confirmed_figure(tmp_path):
    from rich.console import Console

    from mpsearch.cluster.cli.output import fmt_obj, results_table

    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    session(store)
    best = store.best("c", top=3)
    console = Console(width=250, record=True)
    console.print(results_table(store.study("c"), best, store.baselines("c")))
    text = console.export_text()
    assert "confirmed" in text.splitlines()[2]  # the header row
    assert fmt_obj(best[0].confirmed) in text
