"""A searched KV-cache precision scored in a real worker: the cache (k_proj and v_proj outputs)
quantized to FP8 per tensor exactly as a hand-written quantizer does, the objective moved by it
and back when the cache returns to 16 bits."""

from __future__ import annotations

import torch

from mpsearch.cluster.job import prepare
from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces import Candidate

from .test_activations import _round_e4m3

CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}


def per_tensor_reference(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with one scale for the tensor, s = max(absmax/448, 1/(448·512)), in Python."""
    flat = x.flatten().tolist()
    s = max(max(abs(v) for v in flat) / 448, 1 / (448 * 512))
    return torch.tensor([_round_e4m3(v / s) * s for v in flat]).reshape(x.shape)


def test_the_worker_scores_the_cache_quantized(tiny_llama_path):
    from mpsearch.workers.checkpoint import scoring_setup
    from mpsearch.workers.worker import Worker

    job = prepare(parse_spec({"study": "kv", "model": {"name": tiny_llama_path},
                              "space": {"layers": [{"match": r"mlp\.", "options": ["fp16"]}],
                                        "kv_cache": ["fp16", "fp8_e4m3"]},
                              "budget": {"avg_bits": 16}}))
    space = job.space
    kv = [g for g, gene in enumerate(space.genes) if gene.kv]
    assert [space.genes[g].name for g in kv] == [f"model.layers.{i}.self_attn.kv_cache"
                                                 for i in range(2)]
    worker = Worker(scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION, "float32"), space)
    k_proj = worker.model.get_submodule("model.layers.0.self_attn.k_proj")
    seen: dict[str, torch.Tensor] = {}
    k_proj.register_forward_hook(lambda _m, _a, y: seen.__setitem__("raw", y.detach().clone()))

    def at(kv0: str, kv1: str) -> Candidate:
        choice = {kv[0]: kv0, kv[1]: kv1}
        return Candidate(tuple(space.genes[g].options.index(next(
            o for o in space.genes[g].options if o.label == choice.get(g, "fp16")))
            for g in range(len(space.genes))))

    base = worker.evaluate(at("fp16", "fp16")).objective
    one = worker.evaluate(at("fp8_e4m3", "fp16")).objective
    k_proj.register_forward_hook(lambda _m, _a, y: seen.__setitem__("cached", y.detach().clone()))
    worker.score()
    torch.testing.assert_close(seen["cached"], per_tensor_reference(seen["raw"]), rtol=1e-6,
                               atol=0)
    both = worker.evaluate(at("fp8_e4m3", "fp8_e4m3")).objective
    assert base is not None and one is not None and both is not None
    assert base < one < both  # each quantized cache adds error to the 16-bit model's
    assert worker.evaluate(at("fp16", "fp16")).objective == base  # the hooks are gone
    assert space.summarize(at("fp8_e4m3", "fp16")) == "fp16×6 kv:fp16×1 kv:fp8_e4m3×1"
