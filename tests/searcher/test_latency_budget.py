"""A latency budget on a tiny Llama: its row is the measured table's, every strategy meets it.

The table is measured here on the CPU (the kernels of ``workers/kernels.py``, timed by
``workers/latency.py``; the rest of the forward pass from the model itself), so the row's costs
are real GEMM times of the model's shapes, not a function of the stored bits (tinygemm int4,
``_int_mm`` and ``_scaled_mm`` for W8A8, dequantize + matmul for int2 and int8 with groups of 32).
"""

from __future__ import annotations

import pytest
import torch

from mpsearch.searcher import SEARCHERS, SearchContext, SearcherConfig, make_searcher
from mpsearch.spaces import LayerRule, build_space, parse_option
from mpsearch.spaces.latency import GemmPoint, LatencyTable, gemm_points, kernel_key
from mpsearch.spaces.space import Budget, Candidate
from mpsearch.workers.config import ModelConfig
from mpsearch.workers.latency import measure_entries, rest_timing
from mpsearch.workers.model_loading import inspect_model, load_model

OPTIONS = ("int2-g32-asym", "int4-g32-asym", "int8-g32-asym", "w8a8-int8", "w8a8-fp8", "fp16")
PARAMS = {"hybrid": {"seeds": 2}, "integer-program": {"solutions": 3}}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def measured(tiny_llama_path):
    """The tiny Llama's space and its latency table at batch 2 × 1 token, measured on the CPU."""
    torch.set_num_threads(1)
    info = inspect_model(ModelConfig(name=tiny_llama_path))
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.",
                                                tuple(parse_option(o) for o in OPTIONS))],
                        (), info.total_params)
    entries = measure_entries(gemm_points(space), 2, 1, CPU, torch.float32, warmup=1, repeats=5)
    model = load_model(info.path, info.kind, "float32", "cpu")
    rest = rest_timing(model, {ly.name: ly.out_features for ly in space.layers}, 2, 1, CPU,
                       warmup=1, repeats=5)
    table = LatencyTable("cpu", "test", "float32", 2, 1, {e.point: e for e in entries}, rest.ms)
    return space, table


def test_the_row_is_the_sum_of_the_entries_plus_the_rest(measured):
    space, table = measured
    row = table.constraint(space, 1e9)
    assert row.name == "latency" and row.unit == "ms" and row.constant == table.rest_ms > 0
    for choices in [(0,) * len(space.genes), (4,) * len(space.genes),
                    tuple(i % 5 for i in range(len(space.genes)))]:
        c = Candidate(choices)
        by_layer = sum(table.entries[p].ms for p in _points(space, c)) + table.rest_ms
        assert row.value(choices) == pytest.approx(by_layer, rel=1e-12)
        assert table.candidate_ms(space, c) == pytest.approx(by_layer, rel=1e-12)


def _points(space, candidate):
    layers = {ly.name: ly for ly in space.layers}
    return [GemmPoint(layers[n].out_features, layers[n].in_features, kernel_key(option))
            for n, option in space.decode(candidate).items()]


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_strategy_meets_the_latency_budget(measured, synthetic, name):
    space, table = measured
    # between the uniform int2 and int4 configurations (both within 6 bits): one of them meets
    # it, the other does not, so the row binds and a feasible start exists
    low, mid = (table.candidate_ms(space, space.uniform(parse_option(o)))
                for o in ("int2-g32-asym", "int4-g32-asym"))
    limit = (low + mid) / 2
    budget = Budget(avg_bits=6.0, extra=(table.constraint(space, limit),))
    f = synthetic.Additive(space, seed=2)
    searcher = make_searcher(SearcherConfig(name=name, params=PARAMS.get(name, {})), space,
                             budget, 1, SearchContext(study=f"latency-{name}"))
    rec = synthetic.run(searcher, f, 100, slots=2)
    proposed = [t for t in rec.trials if not (t["candidate"].origin.endswith(":probe")
                                              or t["candidate"].origin == "uniform")]
    assert proposed or name == "uniform", name  # uniform proposes its baselines only
    for t in proposed:
        c = t["candidate"]
        assert t["feasible"], f"{name} proposed {c} over the budget"
        assert table.candidate_ms(space, c) <= limit + 1e-9
        assert space.cost(c).avg_bits <= 6.0 + 1e-9
