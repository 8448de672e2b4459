"""A searched KV cache in the cost model: its bytes by hand on the tiny GQA Llama, one gene for
vLLM, every strategy and the program (against brute force) under avg_bits and memory together,
and what a KV choice cannot be asked of, one line each."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import yaml

from mpsearch.cluster.job import prepare
from mpsearch.cluster.spec import parse_spec
from mpsearch.searcher import SEARCHERS, SearchContext, SearcherConfig, make_searcher
from mpsearch.searcher.ip_searcher import IntegerProgramSearcher, knapsack_for
from mpsearch.spaces.budget import MemoryBudget
from mpsearch.spaces.space import Budget, Candidate

from .conftest import assert_one_line_error, invoke
from .test_memory_budget import _run

ELEMENTS = 2 * 2 * 16  # per token and layer: (K, V) × 2 KV heads × head dim 16
KV = ["fp16", "fp8_e4m3"]


def _job(path, budget, runtime=None, options=("int2-g64-sym", "int4-g64-sym", "fp16"),
         match=r"mlp\."):
    space = {"layers": [{"match": match, "options": list(options)}], "kv_cache": KV}
    if runtime:
        space["runtime"] = runtime
    return prepare(parse_spec({"study": "kv", "model": {"name": path}, "space": space,
                               "calibration": {"samples": 2, "seq_len": 16}, "budget": budget}))


def _additive(space, seed=0):
    """Loss falling with bits per weight gene; an FP8 cache costs a fixed loss per layer."""
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0, 1, size=len(space.genes))

    def f(c: Candidate) -> float:
        return float(sum(s * (2.0 ** -g.options[o].bits if g.layers else 0.02 * (o == 1))
                         for s, g, o in zip(scale, space.genes, c.choices, strict=True)))
    return f


def test_kv_bytes_per_token_and_at_the_load_are_exact(tiny_llama_path):
    job = _job(tiny_llama_path, {"memory": {"bytes": 1e12, "context": 300, "batch": 2}})
    space = job.space
    kv = [g for g, gene in enumerate(space.genes) if gene.kv]
    assert len(kv) == 2 and [o.label for o in space.genes[kv[0]].options] == KV
    assert [space.gene_size(kv[0], o) / 8 for o in (0, 1)] == [ELEMENTS * 2, ELEMENTS * 1 + 8]
    (row,) = space.constraints(job.budget)
    c = Candidate(tuple(1 if g == kv[0] else 0 for g in range(len(space.genes))))
    by_hand = (space.cost(c).total_bytes + ELEMENTS * 1 * 600 + 8  # layer 0: fp8 + 2 fp32 scales
               + ELEMENTS * 2 * 600)  # layer 1: 16-bit
    assert row.value(c.choices) == pytest.approx(by_hand, rel=1e-15)
    assert space.cost(c).avg_bits == space.cost(Candidate((0,) * len(space.genes))).avg_bits


def test_vllm_takes_one_cache_precision(tiny_llama_path):
    job = _job(tiny_llama_path, {"avg_bits": 16}, runtime="vllm", options=("int4-g64-sym", "fp16"),
               match=r"layers\.\d+\.")
    (gene,) = [g for g in job.space.genes if g.kv]
    assert gene.name == "kv_cache" and len(gene.kv) == 2


def _tight(space, f):
    """avg_bits and memory bounds that bind in different places (two rows in the program)."""
    loose = Budget(avg_bits=16, memory=MemoryBudget(1e12, 4096, 4))
    everything = [Candidate(c) for c in itertools.product(*(range(n) for n in space.sizes))]
    memory = sorted(space.constraints(loose)[1].value(c.choices) for c in everything)
    return everything, Budget(avg_bits=6.0, memory=MemoryBudget(memory[len(memory) // 3], 4096, 4))


def test_the_program_matches_brute_force_with_the_cache_searched(tiny_llama_path):
    job = _job(tiny_llama_path, {"avg_bits": 16})
    space, f = job.space, _additive(job.space, 2)
    everything, budget = _tight(space, f)
    assert knapsack_for(space, budget, np.zeros((len(space.genes), 3))).caps.shape == (2,)
    feasible = [c for c in everything if space.feasible(c, budget)]
    best = min(f(c) for c in feasible)
    assert best > min(f(c) for c in everything if space.feasible(c, Budget(avg_bits=6.0)))
    solution, ok = _run(IntegerProgramSearcher(space, budget, 0), f, 100)[-1]
    assert solution.origin == "integer-program:0" and ok
    assert f(solution) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_strategy_meets_memory_with_the_cache_searched(tiny_llama_path, name):
    job = _job(tiny_llama_path, {"avg_bits": 16})
    space, f = job.space, _additive(job.space, 4)
    _, budget = _tight(space, f)
    params = {"hybrid": {"seeds": 2}, "integer-program": {"solutions": 3}}.get(name, {})
    searcher = make_searcher(SearcherConfig(name=name, params=params), space, budget, 0,
                             SearchContext(study=f"kv-{name}"))
    seen = _run(searcher, f, 40, slots=2)
    proposed = [(c, ok) for c, ok in seen if not c.origin.endswith(":probe")
                and c.origin != "uniform"]
    assert proposed or name == "uniform"
    assert all(ok for _, ok in proposed), name
    assert any(c.choices[-1] == 1 or c.choices[-2] == 1 for c, _ in proposed) or \
        name == "uniform"  # the cache is searched: some proposal quantizes one


@pytest.mark.parametrize("model, space, message", [
    ("tiny_gpt2_path", {"kv_cache": KV}, "has no attention layers with k_proj and v_proj"),
    ("tiny_llama_path", {"kv_cache": ["int4-g64-sym"]}, "int4-g64-sym is not a KV-cache precision"),
    ("tiny_llama_path", {"kv_cache": KV, "runtime": "llama.cpp",
                         "layers": [{"match": "mlp", "options": ["q8_0", "fp16"]}]},
     "runtime llama.cpp cannot hold a fp8_e4m3 cache"),
])
def test_kv_options_the_model_cannot_take_are_one_line(request, tmp_path, model, space, message):
    db = tmp_path / "none.db"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"study": "kv", "model": {"name": request.getfixturevalue(model)},
                                    "space": space, "budget": {"avg_bits": 8},
                                    "storage": {"url": f"sqlite:///{db}"}}))
    res = invoke("run", str(spec))
    assert_one_line_error(res, message)
    assert not db.exists()


@pytest.mark.slow  # inspects MiniLM
def test_kv_options_on_an_encoder_are_one_line(tmp_path):
    db = tmp_path / "none.db"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"study": "enc", "space": {"kv_cache": KV},
                                    "budget": {"avg_bits": 8},
                                    "storage": {"url": f"sqlite:///{db}"}}))
    assert_one_line_error(invoke("run", str(spec)), "space.kv_cache: model 'minilm' is an encoder")
    assert not db.exists()


def test_uniform_baselines_put_the_cache_at_16_bits(tiny_llama_path):
    space = _job(tiny_llama_path, {"avg_bits": 16}).space
    assert [o.label for o in space.uniform_options()] == ["int2-g64-sym", "int4-g64-sym", "fp16"]
    c = space.uniform(space.uniform_options()[1])
    assert set(space.decode(c).values()) == {space.uniform_options()[1]}
    assert {o.label for o in space.decode_kv(c).values()} == {"fp16"}
