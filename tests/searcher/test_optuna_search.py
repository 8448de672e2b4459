"""The Optuna strategy: samplers, budget rejection before evaluation, resume from its storage."""

from __future__ import annotations

import optuna
import pytest

from mpsearch.searcher import OptunaSearcher, SearchContext
from mpsearch.searcher.optuna_search import OptunaParams
from mpsearch.spaces.space import Budget

BUDGET = Budget(avg_bits=3.5)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2"])
def test_samplers_run_within_budget(synthetic, sampler):
    space = synthetic.make_space(8, seed=9)
    f = synthetic.Additive(space, seed=9)
    searcher = OptunaSearcher(space, BUDGET, 0, OptunaParams(sampler=sampler, startup_trials=5))
    rec = synthetic.run(searcher, f, 25)
    assert len(rec.trials) == 25 and all(t["feasible"] for t in rec.trials)
    trials = searcher.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) >= 25 and all(t.constraints["budget"] <= 0 for t in trials)
    if sampler == "nsga2":
        assert len(trials[0].values) == 2  # objective and effective bits


def test_resumes_from_its_storage(synthetic, tmp_path):
    space = synthetic.make_space(8, seed=10)
    f = synthetic.Additive(space, seed=10)
    url = f"sqlite:///{tmp_path / 'study.optuna.db'}"
    ctx = SearchContext(study="resume-me", storage=url)
    first = synthetic.run(OptunaSearcher(space, BUDGET, 0, context=ctx), f, 15)
    again = OptunaSearcher(space, BUDGET, 0, context=ctx)
    assert len(again.known) == 15  # it sees what the first run evaluated
    second = synthetic.run(again, f, 15)
    seen = {t["candidate"].choices for t in first.trials}
    assert not seen & {t["candidate"].choices for t in second.trials}  # nothing re-evaluated
    study = optuna.load_study(study_name="resume-me", storage=url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 30


def test_results_it_did_not_ask_for_are_learned(synthetic):
    from mpsearch.searcher import Evaluation

    space = synthetic.make_space(6, seed=11)
    f = synthetic.Additive(space, seed=11)
    searcher = OptunaSearcher(space, BUDGET, 0)
    baseline = space.uniform(space.uniform_options()[1])
    searcher.tell([Evaluation(baseline, f(baseline))])
    searcher.ask(1)  # learned once the choices are fixed, at the first ask
    done = searcher.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 1 and baseline.choices in searcher.known


def test_window_keeps_genes_near_the_budget_and_beats_uniform(synthetic):
    """At a budget equal to a uniform level, every draw over the whole space is over budget and
    its random repair is worse than uniform; within one tier of the budget TPE improves on it."""
    from mpsearch.searcher import Evaluation

    space = synthetic.transformer_space(6, options=synthetic.DENSE)  # MiniLM's 36 genes
    f = synthetic.Additive(space, seed=12)
    budget = Budget(avg_bits=4.25)
    uniform = {o.label: space.uniform(o) for o in space.uniform_options()}
    best_uniform = f(uniform["int4-g128-asym"])
    searcher = OptunaSearcher(space, budget, 0)
    searcher.ask(1)  # fixes the choices
    dists = searcher.dists
    assert all(d.choices == ("int3-g128-asym", "int4-g128-asym", "int5-g128-asym")
               for d in dists.values())
    searcher.tell([Evaluation(uniform["fp16"], f(uniform["fp16"]))])  # outside: not learned
    assert not searcher.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    searcher = OptunaSearcher(space, budget, 0)
    rec = synthetic.run(searcher, f, 150)
    assert all(t["feasible"] for t in rec.trials)
    assert rec.best()[0] < 0.9 * best_uniform
    whole = synthetic.run(OptunaSearcher(space, budget, 0, OptunaParams(window=None)), f, 150)
    assert whole.best()[0] > best_uniform  # the same sampler over every option


def test_a_reopened_study_keeps_the_choices_it_was_created_with(synthetic, tmp_path):
    """Optuna refuses a parameter whose choices change, so a study created over every option
    (or by a version without the window) continues with those choices."""
    space = synthetic.transformer_space(2, options=synthetic.DENSE)
    f = synthetic.Additive(space, seed=13)
    budget = Budget(avg_bits=4.25)
    ctx = SearchContext(study="whole", storage=f"sqlite:///{tmp_path / 's.optuna.db'}")
    synthetic.run(OptunaSearcher(space, budget, 0, OptunaParams(window=None), ctx), f, 20)
    again = OptunaSearcher(space, budget, 0, OptunaParams(window=1), ctx)
    again.ask(1)
    assert len(again.known) == 20 and all(len(a) == len(synthetic.DENSE) for a in again.allowed)
    again = OptunaSearcher(space, budget, 0, OptunaParams(window=1), ctx)
    rec = synthetic.run(again, f, 20)
    assert len(rec.trials) == 20 and all(t["feasible"] for t in rec.trials)


def formats_space_and_objective(synthetic):
    """MiniLM's 36 genes with four formats at 4.25 bits and two at 3.25 and 5.25: RTN, GPTQ
    (clearly better for every layer), nf4 and mxfp4; the objective additive."""
    from dataclasses import replace

    from mpsearch.spaces.options import QuantOption

    gptq = [replace(o, rounding="gptq") for o in synthetic.DENSE if o.bits in (3, 4, 5)]
    floats = [QuantOption("nf4"), QuantOption("mxfp4")]
    space = synthetic.transformer_space(6, options=synthetic.DENSE + tuple(gptq + floats))
    f = synthetic.Additive(space, seed=14)
    factor = {"rtn": 1.0, "gptq": 0.3, "nf4": 0.6, "mxfp4": 0.8}
    for g, gene in enumerate(space.genes):
        for o, opt in enumerate(gene.options):
            key = opt.rounding if opt.format == "int" else opt.format
            f.d[g, o] *= factor.get(key, 1.0)
    return space, f


def test_formats_keep_the_best_baselines_format_per_tier_and_beat_uniform(synthetic):
    """With several formats per tier a draw mixes in worse formats and TPE does not get past the
    best uniform configuration; keeping the best baseline's format per tier, it does."""
    from mpsearch.searcher import SearcherConfig, make_searcher

    space, f = formats_space_and_objective(synthetic)
    budget = Budget(avg_bits=4.25)
    uniforms = [space.uniform(o) for o in space.uniform_options()]
    best_uniform = min(f(c) for c in uniforms if space.feasible(c, budget))
    n = 150 + len(uniforms)

    def run(formats):
        cfg = SearcherConfig(name="optuna", params={"formats": formats})
        searcher = make_searcher(cfg, space, budget, 0)
        return searcher.stages[1], synthetic.run(searcher, f, n)

    pruned, rec = run(1)
    labels = {name: set(d.choices) for name, d in pruned.dists.items()}
    assert all(c == {"int3-g128-asym-gptq", "int4-g128-asym-gptq", "int5-g128-asym-gptq"}
               for c in labels.values())
    assert all(t["feasible"] for t in rec.trials if t["candidate"] not in uniforms)
    assert rec.best()[0] < 0.95 * best_uniform
    everything, whole = run(None)
    assert all(len(d.choices) == 8 for d in everything.dists.values())
    assert whole.best()[0] > 0.97 * best_uniform
