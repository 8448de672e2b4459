"""A worker whose model spans several devices (here all the CPU): same results as one device, each
layer's variants on its block's device, weights read straight onto their devices, refusals."""

import dataclasses

import pytest
import torch
from torch import nn

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.spaces.space import Candidate
from mpsearch.workers import sharding
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig, WorkersConfig
from mpsearch.workers.model_loading import inspect_model, load_model
from mpsearch.workers.placement import BlockNeeds, PlacementError, place, worker_devices
from mpsearch.workers.worker import Worker, WorkerSetup

OPTIONS = ["int3-g32-asym", "int4-ch-sym-gptq", "fp16"]


def setup_for(path, samples=4, seq_len=16):
    info = inspect_model(ModelConfig(name=path))
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"(layers|h)\.\d+\.",
                                                  "options": OPTIONS}]})
    space = build_space(info.layers, cfg.rules(), (), info.total_params)
    texts = tuple(load_texts(CalibrationConfig(samples=samples, seq_len=seq_len)))
    return WorkerSetup(info.path, info.kind, "kl", texts, seq_len, batch_size=2, threads=1), space


def one_block_each(setup, space):
    """Budgets for two devices that hold exactly one block each (with all its variants)."""
    model = sharding.empty_model(setup.model_path, setup.kind, setup.dtype)
    blocks, fixed, fixed_act, working = sharding.estimate_needs(
        model, space, batch_size=setup.batch_size, seq_len=setup.seq_len,
        samples=len(setup.texts), objective=setup.objective, kl_top_k=setup.kl_top_k)
    assert len(blocks) == 2
    return (fixed + fixed_act + working + blocks[0].hard + blocks[0].variants,
            working + blocks[1].hard + blocks[1].variants)


def spread(setup, space):
    """``setup`` on two "devices" (both the CPU), one block each."""
    return dataclasses.replace(setup, devices=("cpu", "cpu"),
                               device_budgets=one_block_each(setup, space))


def random_candidates(space, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Candidate(tuple(int(torch.randint(k, (1,), generator=g)) for k in space.sizes))
            for _ in range(n)]


@pytest.mark.slow
def test_two_device_worker_scores_exactly_like_one_device_worker(tiny_llama_path):
    setup, space = setup_for(tiny_llama_path)
    one = Worker(setup, space)
    two = Worker(spread(setup, space), space)
    assert one.placement is None
    assert [s.blocks for s in two.placement.shares] == [("model.layers.0",), ("model.layers.1",)]
    candidates = [space.uniform(o) for o in space.uniform_options()] + random_candidates(space, 4)
    for c in candidates:  # GPTQ options included: Hessians gathered through the hooks
        a, b = one.evaluate(c), two.evaluate(c)
        assert a.error is None and b.error is None
        assert b.objective == a.objective and b.extra == a.extra
    first, second = two.cache.parts
    assert len(first) and len(second) and len(first) + len(second) == len(one.cache)
    assert all(name.startswith("model.layers.0.") for name, _ in first)
    assert all(name.startswith("model.layers.1.") for name, _ in second)
    assert two.cache.bytes() == one.cache.bytes()


@pytest.mark.slow
def test_a_spread_gpt2_with_tied_head_scores_like_one_device(tiny_gpt2_path):
    setup, space = setup_for(tiny_gpt2_path)
    one = Worker(setup, space)
    two = Worker(spread(setup, space), space)
    assert two.model.lm_head.weight is two.model.transformer.wte.weight
    for c in random_candidates(space, 3, seed=1):
        assert two.evaluate(c).objective == one.evaluate(c).objective


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_gpt2_path"])
def test_weights_read_onto_their_devices_equal_from_pretrained(fixture, request):
    path = request.getfixturevalue(fixture)
    model = sharding.empty_model(path, "causal-lm", "float32")
    assert all(p.device.type == "meta" for p in model.parameters())
    prefix, blocks = sharding.find_blocks(model)
    placement = place([BlockNeeds(f"{prefix}.{i}", 1, 0) for i in range(len(blocks))],
                      ["cpu", "cpu"], [10, 10])
    assert sharding.materialise_(model, placement, path)
    reference = load_model(path, "causal-lm", "float32", "cpu")
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    buffers = dict(reference.named_buffers())  # non-persistent ones (rotary inv_freq) too
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())


def test_files_that_do_not_match_the_parameters_fall_back(tiny_llama_path, tmp_path):
    model = sharding.empty_model(tiny_llama_path, "causal-lm", "float32")
    placement = place([BlockNeeds("model.layers.0", 1, 0), BlockNeeds("model.layers.1", 1, 0)],
                      ["cpu"], [10])
    assert not sharding.materialise_(model, placement, str(tmp_path))  # no safetensors there
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.slow
def test_random_weights_are_built_on_their_devices_and_score(tiny_llama_path):
    setup, space = setup_for(tiny_llama_path, samples=2)
    worker = Worker(dataclasses.replace(setup, devices=("cpu", "cpu"), random_weights=True),
                    space)
    assert worker.weight_error is None
    outcome = worker.evaluate(random_candidates(space, 1)[0])
    assert outcome.error is None and outcome.objective is not None and outcome.objective > 0


def test_a_model_that_cannot_fit_is_refused_in_one_line_before_loading(tiny_llama_path,
                                                                     monkeypatch):
    setup, space = setup_for(tiny_llama_path, samples=2)
    monkeypatch.setattr(sharding, "materialise_", lambda *a: pytest.fail("weights were read"))
    with pytest.raises(PlacementError) as err:
        Worker(dataclasses.replace(setup, devices=("cpu", "cpu"), device_budgets=(1 << 20,) * 2),
               space)
    assert "\n" not in str(err.value) and "workers.gpus" in str(err.value)


def test_a_model_without_repeated_blocks_cannot_be_spread():
    with pytest.raises(PlacementError, match="workers.gpus <= 1"):
        sharding.find_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_workers_gpus_above_one_gives_that_many_devices_and_must_be_whole():
    assert worker_devices(2, "cuda") == ("cuda:0", "cuda:1")
    assert worker_devices(1, "cuda") == ()  # one GPU, or a fraction: one device, as before
    assert worker_devices(0.25, "cuda") == ()
    assert worker_devices(4, "cpu") == ()
    assert WorkersConfig(gpus=4).gpus == 4
    with pytest.raises(ValueError, match="whole number"):
        WorkersConfig(gpus=1.5)


@pytest.mark.slow
def test_ray_workers_report_their_placement_and_refuse_in_one_line(tiny_llama_path, ray_session,
                                                                   capsys):
    from mpsearch.cluster.executor import RayExecutor
    from mpsearch.cluster.job import report_placement
    from mpsearch.workers.errors import WorkerError

    setup, space = setup_for(tiny_llama_path, samples=2)
    two = spread(setup, space)
    executor = RayExecutor(two, space, 1, cpus=1)
    try:
        report_placement(executor)
        executor.submit(0, random_candidates(space, 1)[0])
        [(key, outcome)] = executor.collect()
        assert key == 0 and outcome.error is None and outcome.objective is not None
    finally:
        executor.shutdown()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(executor.labels[0]) for line in lines)
    assert "model.layers.0;" in lines[0] and "model.layers.1;" in lines[1]
    tiny = dataclasses.replace(two, device_budgets=(1 << 20, 1 << 20))
    with pytest.raises(WorkerError) as err:
        RayExecutor(tiny, space, 1, cpus=1)
    message = str(err.value)
    assert "\n" not in message and message.startswith("worker failed to start")
    assert "does not fit" in message and "workers.gpus" in message


def test_blocks_budget_the_hessians_their_gptq_options_keep(tiny_llama_path):
    model = sharding.empty_model(tiny_llama_path, "causal-lm", "float32")
    info = inspect_model(ModelConfig(name=tiny_llama_path))

    def needs(options):
        cfg = SpaceConfig.model_validate({"layers": [{"match": r"layers\.\d+\.",
                                                      "options": options}]})
        space = build_space(info.layers, cfg.rules(), (), info.total_params)
        blocks, *_ = sharding.estimate_needs(model, space, batch_size=2, seq_len=16, samples=4,
                                             objective="kl", kl_top_k=None)
        return blocks, space

    rtn, space = needs(["int4-ch-sym", "fp16"])
    gptq, _ = needs(["int4-ch-sym-gptq", "fp16"])
    layers = [layer for layer in space.layers if layer.name.startswith("model.layers.0.")]
    hessians = sum(4 * la.in_features ** 2 + 8 * la.in_features for la in layers)
    assert gptq[0].activations - rtn[0].activations == hessians
    assert gptq[0].weights == rtn[0].weights and gptq[0].variants == rtn[0].variants
    assert rtn[0].variants == sum(2 * 4 * la.numel for la in layers)  # two fp32 copies each


@pytest.mark.slow
def test_a_spread_encoder_loaded_through_from_pretrained_scores_like_one_device(minilm_path):
    # MiniLM's files do not name the parameters one to one: loaded on the CPU, then moved
    info = inspect_model(ModelConfig(name=minilm_path))
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"layer\.\d+\.", "options": OPTIONS}]})
    space = build_space(info.layers, cfg.rules(), (), info.total_params)
    texts = tuple(load_texts(CalibrationConfig(samples=4, seq_len=16)))
    setup = WorkerSetup(info.path, info.kind, "embedding_distortion", texts, 16, batch_size=2,
                        threads=1)
    assert not sharding.materialise_(sharding.empty_model(info.path, info.kind, "float32"),
                                     place([BlockNeeds("encoder.layer.0", 1, 0)], ["cpu"], [9]),
                                     info.path)
    one = Worker(setup, space)
    blocks, fixed, fixed_act, working = sharding.estimate_needs(
        one.model, space, batch_size=2, seq_len=16, samples=4, objective="embedding_distortion",
        kl_top_k=None)
    half = sum(b.hard + b.variants for b in blocks[:3])
    two = Worker(dataclasses.replace(setup, devices=("cpu", "cpu"), device_budgets=(
        fixed + fixed_act + working + half, working + half)), space)
    assert [len(s.blocks) for s in two.placement.shares] == [3, 3]
    for c in random_candidates(space, 3):
        assert two.evaluate(c).objective == one.evaluate(c).objective


@pytest.mark.slow
def test_a_spread_mixtral_with_fused_experts_scores_like_one_device(tiny_mixtral_path):
    setup, space = setup_for(tiny_mixtral_path)
    assert any(".experts." in layer.name for layer in space.layers)
    one, two = Worker(setup, space), Worker(spread(setup, space), space)
    assert [s.blocks for s in two.placement.shares] == [("model.layers.0",), ("model.layers.1",)]
    for c in [space.uniform(o) for o in space.uniform_options()] + random_candidates(space, 2):
        a, b = one.evaluate(c), two.evaluate(c)  # GPTQ on fused experts included
        assert a.error is None and b.error is None and b.objective == a.objective
