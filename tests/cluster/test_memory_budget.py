"""The memory budget on a tiny Llama with grouped-query attention: the KV cache's bytes by hand,
every strategy within it, the program's optimum checked by brute force, bad input one line."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import yaml

from mpsearch.cluster.job import prepare
from mpsearch.cluster.spec import parse_spec
from mpsearch.searcher import (
    SEARCHERS,
    SearchContext,
    SearcherConfig,
    SerialExecutor,
    make_searcher,
    run_search,
)
from mpsearch.searcher.ip_searcher import IntegerProgramSearcher
from mpsearch.spaces.budget import MemoryBudget
from mpsearch.spaces.space import Budget, Candidate

from .conftest import assert_one_line_error, invoke

# tests/conftest.py's tiny Llama: 2 layers, 4 heads of 64/4 = 16, 2 KV heads
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 2  # layers × (K, V) × KV heads × head dim × 2 bytes (fp16)


def _job(path, budget, options=("int2-g64-asym", "int4-g64-asym", "int8-g64-asym", "fp16"),
         match=r"layers\.\d+\."):
    return prepare(parse_spec({"study": "m", "model": {"name": path, "kind": "causal-lm"},
                               "calibration": {"samples": 2, "seq_len": 16},
                               "space": {"layers": [{"match": match, "options": list(options)}]},
                               "budget": budget}))


def _additive(space, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0, 1, size=len(space.genes))

    def f(c: Candidate) -> float:
        return float(sum(s * 2.0 ** -g.options[o].bits
                         for s, g, o in zip(scale, space.genes, c.choices, strict=True)))
    return f


class _Recorder:
    """The loop's recorder: each started candidate and whether the loop found it feasible."""

    def __init__(self) -> None:
        self.seen: list[tuple[Candidate, bool]] = []

    def start(self, candidate, cost, feasible):
        self.seen.append((candidate, feasible))
        return len(self.seen) - 1

    def finish(self, key, candidate, outcome):
        pass


def _run(searcher, f, evaluations, slots=1):
    rec = _Recorder()
    run_search(searcher, SerialExecutor(f, slots), rec, evaluations, searcher.space,
               searcher.budget)
    return rec.seen


def test_kv_cache_bytes_are_exact_from_the_config(tiny_llama_path):
    job = _job(tiny_llama_path, {"memory": {"bytes": 1e9, "context": 1000, "batch": 3,
                                            "activations": 12345}})
    assert [(a.name, a.kv_heads, a.head_dim) for a in job.space.attention] == [
        (f"model.layers.{i}.self_attn", 2, 16) for i in range(2)]
    assert job.budget.memory == MemoryBudget(1e9, 1000, 3, 12345.0)
    (row,) = job.space.constraints(job.budget)
    rng = np.random.default_rng(0)
    for _ in range(10):
        c = Candidate(tuple(int(rng.integers(n)) for n in job.space.sizes))
        expected = job.space.cost(c).total_bytes + KV_BYTES_PER_TOKEN * 1000 * 3 + 12345
        assert row.value(c.choices) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_strategy_meets_the_memory_budget(tiny_llama_path, name):
    probe = _job(tiny_llama_path, {"memory": {"bytes": 1e12, "context": 4096, "batch": 8}})
    least = probe.space.constraints(probe.budget)[0].least()
    bound = least + 0.4 * (probe.space.cost(probe.space.uniform(
        probe.space.uniform_options()[-1])).total_bytes + KV_BYTES_PER_TOKEN * 4096 * 8 - least)
    job = _job(tiny_llama_path, {"memory": {"bytes": bound, "context": 4096, "batch": 8}})
    f = _additive(job.space)
    params = {"hybrid": {"seeds": 2}, "integer-program": {"solutions": 3}}.get(name, {})
    searcher = make_searcher(SearcherConfig(name=name, params=params), job.space, job.budget, 0,
                             SearchContext(study=f"mem-{name}"))
    seen = _run(searcher, f, 60, slots=2)
    proposed = [(c, ok) for c, ok in seen if not c.origin.endswith(":probe")
                and c.origin != "uniform"]
    assert proposed or name == "uniform"
    for c, ok in proposed:
        memory = job.space.cost(c).total_bytes + KV_BYTES_PER_TOKEN * 4096 * 8
        assert ok and memory <= bound + 1e-6, (name, c, memory, bound)


def test_the_program_finds_the_brute_force_optimum_under_avg_bits_and_memory(tiny_llama_path):
    options = ("int2-g64-asym", "int4-g64-asym", "fp16")
    loose = _job(tiny_llama_path, {"avg_bits": 16, "memory": {"bytes": 1e12, "context": 512}},
                 options, match=r"mlp\.")  # 6 layers, 3 options: 729 configurations
    space = loose.space
    assert len(space.genes) == 6
    f = _additive(space, 3)
    everything = [Candidate(c) for c in itertools.product(*(range(n) for n in space.sizes))]
    memory = sorted(space.constraints(loose.budget)[1].value(c.choices) for c in everything)
    for avg_bits, at in ((6.0, 0.5), (9.0, 0.3), (4.0, 0.9)):
        budget = Budget(avg_bits=avg_bits, memory=MemoryBudget(memory[int(at * len(memory))], 512))
        feasible = [c for c in everything if space.feasible(c, budget)]
        best = min(f(c) for c in feasible)
        searcher = IntegerProgramSearcher(space, budget, 0)
        seen = _run(searcher, f, 100)
        solution, ok = seen[-1]
        assert solution.origin == "integer-program:0" and ok
        assert f(solution) == pytest.approx(best, abs=1e-12)


def test_a_memory_budget_below_the_smallest_configuration_is_one_line(tiny_llama_path, tmp_path):
    db = tmp_path / "none.db"
    spec = tmp_path / "job.yaml"
    job = _job(tiny_llama_path, {"memory": {"bytes": 1e12, "context": 2048, "batch": 4}})
    least = job.space.constraints(job.budget)[0].least()
    spec.write_text(yaml.safe_dump({
        "study": "low", "model": {"name": tiny_llama_path},
        "space": {"layers": [{"match": r"layers\.\d+\.",
                              "options": ["int2-g64-asym", "int4-g64-asym", "fp16"]}]},
        "budget": {"memory": {"bytes": least - 1, "context": 2048, "batch": 4}},
        "storage": {"url": f"sqlite:///{db}"}}))
    res = invoke("run", str(spec))
    assert_one_line_error(res, "budget memory: ", "is below the smallest configuration of the "
                               f"space ({least:,.0f} bytes)")
    assert not db.exists()


@pytest.mark.slow  # inspects MiniLM
def test_a_memory_budget_on_an_encoder_is_one_line(tmp_path):
    db = tmp_path / "none.db"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"study": "enc", "budget": {"memory": {
        "bytes": 1e9, "context": 128}}, "storage": {"url": f"sqlite:///{db}"}}))
    res = invoke("run", str(spec))
    assert_one_line_error(res, "budget.memory: model 'minilm' is an encoder")
    assert not db.exists()


def test_a_memory_frontier_is_a_list_of_bytes():
    budget = parse_spec({"study": "f", "budget": {"avg_bits": 5, "memory": {
        "bytes": [3e7, "2e7"], "context": 2048, "batch": 2}}}).budget
    assert budget.axis == "memory"
    assert budget.to_budgets() == tuple(Budget(avg_bits=5, memory=MemoryBudget(b, 2048, 2))
                                        for b in (2e7, 3e7))
