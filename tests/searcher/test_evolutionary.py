"""Evolution (1+λ, multi-step selection, population) and the hybrid on synthetic objectives."""

from __future__ import annotations

import pytest

from mpsearch.searcher import (
    EvolutionarySearcher,
    HybridSearcher,
    IntegerProgramSearcher,
    PopulationEvolutionarySearcher,
)
from mpsearch.searcher.evolutionary import EvolutionaryParams
from mpsearch.searcher.hybrid import HybridParams
from mpsearch.searcher.population import PopulationParams
from mpsearch.spaces.space import Budget

BUDGET = Budget(avg_bits=4.0)


def _optimum(synthetic, space, f):
    ip = IntegerProgramSearcher(space, BUDGET, 0)
    rec = synthetic.run(ip, f, 10_000)
    return rec.trials[-1]["objective"], rec.trials[-1]["candidate"]


@pytest.mark.parametrize("seed", [4, 6])
def test_evolution_within_one_percent_on_30_additive_layers(synthetic, seed):
    space = synthetic.transformer_space(5, synthetic.DENSE)  # 5 blocks × 6 layers
    f = synthetic.Additive(space, seed=seed)
    best, _ = _optimum(synthetic, space, f)  # exact: the IP is proven optimal on additive f
    rec = synthetic.run(EvolutionarySearcher(space, BUDGET, 0), f, 2000)
    assert rec.best()[0] <= best * 1.01


def test_with_interactions_evolution_beats_the_additive_optimum(synthetic):
    space = synthetic.make_space(20, seed=5)
    f = synthetic.Additive(space, seed=5, interaction=0.02)
    additive, cand = _optimum(synthetic, space, f)  # the IP sees only single-gene deltas
    evo = synthetic.run(EvolutionarySearcher(space, BUDGET, 0), f, 1200)
    hybrid = synthetic.run(HybridSearcher(space, BUDGET, 0), f, 1200)
    assert evo.best()[0] < additive
    assert hybrid.best()[0] < additive


def test_multi_step_selection_follows_the_schedule(synthetic):
    space = synthetic.make_space(12, seed=6)
    base = synthetic.Additive(space, seed=6)

    def f(c):  # fewer samples, more (deterministic) noise
        noise = (hash(c.choices) % 1000) / 1000 - 0.5
        return base(c) + (0.0 if c.samples is None else 0.01 * noise / c.samples)

    params = EvolutionaryParams(selection=[(8, 2), (3, 6), (1, None)])
    rec = synthetic.run(EvolutionarySearcher(space, BUDGET, 0, params), f, 400)
    samples = [t["candidate"].samples for t in rec.trials]
    assert samples[0] is None  # generation 0: the parent on the last stage's samples
    gen = samples[1:13]
    assert gen == [2] * 8 + [6] * 3 + [None]
    assert all(t["feasible"] for t in rec.trials)
    with pytest.raises(ValueError, match="non-increasing"):
        EvolutionaryParams(selection=[(4, 2), (8, 4)])
    with pytest.raises(ValueError, match="offspring"):
        EvolutionaryParams(offspring=16, selection=[(8, 2)])


def test_default_is_single_fidelity(synthetic):
    space = synthetic.make_space(10, seed=7)
    rec = synthetic.run(EvolutionarySearcher(space, BUDGET, 0), synthetic.Additive(space, 7), 60)
    assert all(t["candidate"].samples is None for t in rec.trials)


def test_population_variant_keeps_many_workers_busy(synthetic):
    space = synthetic.transformer_space(5, synthetic.DENSE)
    f = synthetic.Additive(space, seed=4)
    best, _ = _optimum(synthetic, space, f)
    searcher = PopulationEvolutionarySearcher(space, BUDGET, 0, PopulationParams(population=8))
    rec = synthetic.run(searcher, f, 1500, slots=8)
    assert rec.best()[0] <= best * 1.05


def test_hybrid_reaches_the_optimum_fast(synthetic):
    space = synthetic.transformer_space(5, synthetic.DENSE)
    f = synthetic.Additive(space, seed=4)
    best, _ = _optimum(synthetic, space, f)
    rec = synthetic.run(HybridSearcher(space, BUDGET, 0, HybridParams(seeds=2)), f, 200)
    assert rec.best()[0] == pytest.approx(best, rel=1e-9)


def test_hybrid_takes_lambda_from_its_selection_and_keeps_the_programs_optimum(synthetic):
    """A selection whose first stage is not 16 sets λ (it used to fail validation), offspring
    are screened on 2 samples, and what the hybrid finds on all of them is never worse than the
    integer program's optimum it started from."""
    space = synthetic.make_space(10, seed=8)
    f = synthetic.Additive(space, seed=8)
    params = HybridParams(seeds=2, selection=[[6, 2], [2, None]])
    hybrid = HybridSearcher(space, BUDGET, 0, params)
    assert hybrid.evolution.p.offspring == 6
    rec = synthetic.run(hybrid, f, 150)
    assert any(t["candidate"].samples == 2 for t in rec.trials)
    full = [t["objective"] for t in rec.trials
            if t["candidate"].samples is None and t["feasible"] and t["objective"] is not None]
    assert min(full) <= _optimum(synthetic, space, f)[0] + 1e-12
    with pytest.raises(ValueError, match="must equal the first selection count"):
        HybridParams(offspring=16, selection=[[6, 2], [2, None]])
