"""The worker's variant cache and layer swapping give exactly the scores of quantizing from scratch."""

import random

import pytest

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import Worker, WorkerSetup

pytestmark = pytest.mark.slow


def make_worker(name: str, objective: str, samples: int = 4, seq_len: int = 16):
    info = inspect_model(ModelConfig(name=name))
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"(layer|layers|h)\.\d+\.", "options": [
        "int2-g32-asym", "int3-g32-asym", "int4-ch-sym", "int8-g32-asym", "fp16"]}]})
    space = build_space(info.layers, cfg.rules(), (), info.total_params)
    texts = tuple(load_texts(CalibrationConfig(samples=samples, seq_len=seq_len)))
    setup = WorkerSetup(info.path, info.kind, objective, texts, seq_len, batch_size=2, threads=1)
    return Worker(setup, space), space, setup


def from_scratch(setup, space, candidate) -> float:
    """A new worker (fresh model, empty cache) scoring one candidate."""
    return Worker(setup, space).evaluate(candidate).objective


@pytest.mark.parametrize("model_fixture,objective", [
    ("minilm_path", "embedding_distortion"),
    ("tiny_llama_path", "kl"),
    ("tiny_gpt2_path", "kl"),  # GPT-2's Conv1D stores weights transposed
])
def test_swapping_matches_quantizing_from_scratch(request, model_fixture, objective):
    worker, space, setup = make_worker(request.getfixturevalue(model_fixture), objective)
    rng = random.Random(1)
    candidates = [space.cheapest()] + [
        type(space.cheapest())(tuple(rng.randrange(k) for k in space.sizes)) for _ in range(3)]
    swapped = []
    for c in candidates:
        out = worker.evaluate(c)
        assert out.error is None
        swapped.append(out.objective)
    # the last candidate changed only some layers relative to the one before
    assert worker.apply_(candidates[0]) < len(space.layers) or len(space.layers) == 1
    assert worker.apply_(candidates[0]) == 0  # nothing changes when applied twice
    for c, score in zip(candidates[-2:], swapped[-2:], strict=True):
        assert score == pytest.approx(from_scratch(setup, space, c), rel=1e-6, abs=1e-9)
    # each (layer, option) was quantized at most once
    assert len(worker.cache) <= sum(len(g.options) * len(g.layers) for g in space.genes)


def test_objectives_order_by_precision_on_minilm(minilm_path):
    worker, space, _ = make_worker(minilm_path, "embedding_distortion", samples=6, seq_len=24)
    by_option = {o.label: worker.evaluate(space.uniform(o)).objective
                 for o in space.uniform_options()}
    assert by_option["int2-g32-asym"] > by_option["int3-g32-asym"] > by_option["int8-g32-asym"]
    assert by_option["int8-g32-asym"] < 1e-3
    assert 0 <= by_option["fp16"] < 1e-5


def test_kl_is_zero_at_full_precision_and_grows_with_compression(tiny_llama_path):
    worker, space, _ = make_worker(tiny_llama_path, "kl")
    fp16 = worker.evaluate(space.uniform(space.uniform_options()[-1])).objective
    int2 = worker.evaluate(space.uniform(space.uniform_options()[0])).objective
    assert 0 <= fp16 < 1e-4 < int2


def test_fewer_samples_use_the_same_leading_subset(minilm_path):
    worker, space, _ = make_worker(minilm_path, "embedding_distortion", samples=6)
    c = space.uniform(space.uniform_options()[1])
    a = worker.evaluate(c.at_fidelity(2)).objective
    b = worker.evaluate(c.at_fidelity(2)).objective
    full = worker.evaluate(c).objective
    assert a == b and a != full
