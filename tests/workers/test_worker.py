"""The worker: GPTQ variants, the two-tier variant cache, common random numbers, failed trials on
non-finite weights, top-k KL, perplexity and user objectives."""

import math
import sys

import pytest
import torch

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.spaces.space import Candidate
from mpsearch.workers import worker as worker_module
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.objectives import topk_kl
from mpsearch.workers.worker import Worker, WorkerSetup

pytestmark = pytest.mark.slow

OPTIONS = ["int3-g32-asym", "int3-g32-asym-gptq", "int4-ch-sym", "int4-ch-sym-gptq", "fp16"]


def make(name, objective, samples=4, seq_len=16, batch_size=2, options=OPTIONS, **extra):
    info = inspect_model(ModelConfig(name=name))
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"(layer|layers|h)\.\d+\.",
                                                  "options": options}]})
    space = build_space(info.layers, cfg.rules(), (), info.total_params)
    texts = tuple(load_texts(CalibrationConfig(samples=samples, seq_len=seq_len)))
    setup = WorkerSetup(info.path, info.kind, objective, texts, seq_len, batch_size=batch_size,
                        threads=1, **extra)
    return Worker(setup, space), space, setup


def uniform(space, label):
    return space.uniform(next(o for o in space.uniform_options() if o.label == label))


def test_gptq_levels_beat_rtn_levels_and_share_one_hessian_pass(minilm_path, monkeypatch):
    worker, space, _ = make(minilm_path, "embedding_distortion", samples=6)
    passes = []
    gather = worker.gather_statistics
    monkeypatch.setattr(worker, "gather_statistics",
                        lambda names=None, hessians=True: (passes.append(hessians),
                                                           gather(names, hessians)))
    score = {label: worker.evaluate(uniform(space, label)).objective for label in OPTIONS}
    assert score["int3-g32-asym-gptq"] < score["int3-g32-asym"]
    assert score["int4-ch-sym-gptq"] < score["int4-ch-sym"]
    assert passes == [True]  # one calibration pass served both GPTQ levels of every layer
    # after gathering, RTN candidates still score exactly as before (fp weights were restored)
    assert worker.evaluate(uniform(space, "int3-g32-asym")).objective == score["int3-g32-asym"]


def test_host_tier_scores_exactly_like_the_device_tier(tiny_gpt2_path):
    on_device, space, setup = make(tiny_gpt2_path, "kl")
    spilled = Worker(type(setup)(**{**setup.__dict__, "cache_device_bytes": 0}), space)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        c = Candidate(tuple(int(torch.randint(k, (1,), generator=g)) for k in space.sizes))
        assert spilled.evaluate(c).objective == on_device.evaluate(c).objective
    split = spilled.cache_split()
    assert split["host"] > 0
    # the device holds only one slot per layer, never a variant
    assert split["device"] == sum(w.numel() * w.element_size() for w in spilled.original.values())
    assert on_device.cache_split()["host"] == 0
    assert spilled.cache_bytes() == split["device"] + split["host"]


def test_fewer_samples_score_the_same_leading_samples_for_every_candidate(minilm_path):
    """Common random numbers: samples=N is the first N texts, whatever the candidate."""
    full, space, setup = make(minilm_path, "embedding_distortion", samples=6)
    first_two = Worker(type(setup)(**{**setup.__dict__, "texts": setup.texts[:2]}), space)
    for label in ("int3-g32-asym", "int4-ch-sym"):
        c = uniform(space, label)
        assert full.evaluate(c.at_fidelity(2)).objective == first_two.evaluate(c).objective


def test_non_finite_weights_fail_every_trial_with_the_reason(tiny_llama_path):
    worker, space, setup = make(tiny_llama_path, "kl")
    model = worker.model
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    poisoned = Worker(setup, space, model=model)
    out = poisoned.evaluate(space.cheapest())
    assert out.objective is None and "not finite" in out.error and "down_proj" in out.error


def test_non_finite_compressed_weight_fails_the_trial(tiny_llama_path, monkeypatch):
    worker, space, _ = make(tiny_llama_path, "kl")
    monkeypatch.setattr(worker_module, "quantize_weight", lambda w, o, **_: w * float("inf"))
    out = worker.evaluate(uniform(space, "int3-g32-asym"))
    assert out.objective is None and "not finite" in out.error


def test_topk_kl_matches_full_kl_at_full_vocabulary_and_bounds_it_below():
    torch.manual_seed(0)
    logp = torch.log_softmax(3 * torch.randn(2, 5, 100), dim=-1)
    logq = torch.log_softmax(3 * torch.randn(2, 5, 100), dim=-1)
    full = (logp.exp() * (logp - logq)).sum(-1)
    v, i = logp.topk(100, dim=-1)
    torch.testing.assert_close(topk_kl(v, i, logq), full, rtol=1e-4, atol=1e-5)
    v, i = logp.topk(10, dim=-1)
    k10 = topk_kl(v, i, logq)
    assert torch.all(k10 <= full + 1e-5) and torch.all(k10 > 0)


def test_causal_lm_reports_perplexity_and_top_k_kl(tiny_llama_path):
    worker, space, setup = make(tiny_llama_path, "kl")
    topk = Worker(type(setup)(**{**setup.__dict__, "kl_top_k": 64}), space)
    c = uniform(space, "int3-g32-asym")
    full, k64 = worker.evaluate(c), topk.evaluate(c)
    assert 0 < k64.objective <= full.objective * (1 + 1e-5)
    vocab = worker.model.config.vocab_size
    assert 1 < full.extra["perplexity"] < 10 * vocab  # random weights: about the vocabulary size
    assert full.extra["perplexity"] == pytest.approx(k64.extra["perplexity"])
    assert topk.reference[0][0].shape[-1] == 64  # the reference keeps top-k values and indices


def test_user_objective_is_a_function_in_a_file(tiny_llama_path, tmp_path):
    path = tmp_path / "my_objective.py"
    path.write_text(
        "calls = []\n"
        "def mse(reference, output, batch):\n"
        "    calls.append(set(batch))\n"
        "    return ((reference.float() - output.float()) ** 2).mean()\n")
    worker, space, _ = make(tiny_llama_path, f"{path}:mse")
    assert worker.evaluate(uniform(space, "fp16")).objective < 1e-6
    assert worker.evaluate(uniform(space, "int3-g32-asym")).objective > 1e-6
    module = sys.modules[worker.objective.fn.__module__]
    assert {"input_ids", "attention_mask"} <= module.calls[-1]


def test_user_objective_file_missing_on_the_worker_is_named(tiny_llama_path, tmp_path):
    from mpsearch.workers.errors import WorkerError

    with pytest.raises(WorkerError, match="gone.py:f.*no such file"):
        make(tiny_llama_path, f"{tmp_path / 'gone.py'}:f")


def test_evaluation_is_finite_and_cache_grows_once_per_variant(tiny_gpt2_path):
    worker, space, _ = make(tiny_gpt2_path, "kl")
    c = uniform(space, "int4-ch-sym-gptq")
    a, b = worker.evaluate(c), worker.evaluate(c)
    assert a.objective == b.objective and math.isfinite(a.objective)
    assert len(worker.cache) == len(space.layers)


def test_wanda_and_sparse_gptq_use_the_calibration_activation_norms(minilm_path):
    labels = ["int4-g32-asym+s50-wanda", "int4-g32-asym-gptq+2:4-wanda", "fp16"]
    worker, space, _ = make(minilm_path, "embedding_distortion", options=labels)
    for label in labels[:2]:
        out = worker.evaluate(uniform(space, label))
        assert out.error is None and 0 < out.objective < 1
    name, options = space.layers[0].name, space.genes[0].options
    sparse_gptq = worker.variant(name, options[1])
    assert torch.all((sparse_gptq != 0).reshape(-1, 4).sum(dim=1) <= 2)  # 2:4 survived GPTQ
    wanda = worker.variant(name, options[0])
    magnitude = worker_module.quantize_weight(worker.original[name], type(options[0])(
        "int", 4, 32, sparsity=0.5))
    assert not torch.equal(wanda != 0, magnitude != 0)  # the norms changed which weights survive


def test_shared_variants_keep_gptq_calibrated_on_the_source_samples(tiny_llama_path):
    source, space, setup = make(tiny_llama_path, "kl", samples=4)
    held_setup = setup.__class__(**{**setup.__dict__, "texts": tuple(load_texts(
        CalibrationConfig(samples=4, seq_len=16, offset=500)))})
    alone = Worker(held_setup, space)
    held = Worker(held_setup, space)
    held.share_variants(source)
    c = uniform(space, "int3-g32-asym-gptq")
    name, option = space.layers[0].name, space.decode(c)[space.layers[0].name]
    held_value = held.evaluate(c).objective
    assert torch.equal(held.variant(name, option), source.variant(name, option))
    assert not torch.equal(alone.variant(name, option), source.variant(name, option))
    assert held_value != alone.evaluate(c).objective  # same samples, other GPTQ calibration
