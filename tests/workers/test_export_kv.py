"""An FP8 KV cache in the compressed-tensors export: the config's kv_cache_scheme, each attention
layer's k_scale/v_scale calibrated as amax / 448 of the keys and values the plan's model produces,
a checkpoint transformers still loads; a plan with mixed cache precisions refused in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mpsearch.spaces import parse_option
from mpsearch.storage.plan import read_plan
from mpsearch.workers.activations import kv_cache_amax_
from mpsearch.workers.checkpoint import plan_worker, scoring_setup
from mpsearch.workers.export_ct import ExportError, export_compressed_tensors

from .test_export_ct import rescore_in_fresh_process

CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}
ATTENTION = [f"model.layers.{i}.self_attn" for i in range(2)]


@pytest.mark.slow
def test_fp8_kv_cache_export_writes_the_scheme_and_calibrated_scales(tiny_llama_path, tmp_path):
    setup = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION)
    options = {f"model.layers.{i}.mlp.{p}": parse_option("int8-ch-sym" if i else "w8a8-fp8")
               for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    fp8 = parse_option("fp8_e4m3")
    export_compressed_tensors(setup, options, tmp_path / "ct", kv_cache=dict.fromkeys(ATTENTION, fp8))
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["kv_cache_scheme"] == {"num_bits": 8, "type": "float", "strategy": "tensor",
                                         "dynamic": False, "symmetric": True}
    tensors = load_file(tmp_path / "ct" / "model.safetensors")

    worker = plan_worker(setup, options)  # the keys and values of the plan's model, by hand
    seen = {}
    for a in ATTENTION:
        for p in ("k_proj", "v_proj"):
            worker.model.get_submodule(f"{a}.{p}").register_forward_hook(
                lambda _m, _i, y, key=f"{a}.{p}": seen.__setitem__(
                    key, max(seen.get(key, 0.0), float(y.abs().max()))))
    with torch.inference_mode():
        for batch in worker.batches:
            worker.model(**batch)
    for a in ATTENTION:
        for p, scale in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
            stored = tensors[f"{a}.{scale}"]
            assert stored.dtype == torch.float32 and stored.shape == (1,)
            assert float(stored) == pytest.approx(seen[f"{a}.{p}"] / 448, rel=1e-6)
    assert rescore_in_fresh_process(worker, tmp_path / "ct", tmp_path) > 0  # it loads and runs


def test_a_plan_of_mixed_cache_precisions_is_refused(tiny_llama_path, tmp_path):
    setup = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION)
    options = {"model.layers.0.mlp.down_proj": parse_option("int8-ch-sym")}
    kv = {ATTENTION[0]: parse_option("fp8_e4m3"), ATTENTION[1]: parse_option("fp16")}
    with pytest.raises(ExportError, match="one kv_cache_scheme per model, the plan gives "
                                          "model.layers.0.self_attn=fp8_e4m3"):
        export_compressed_tensors(setup, options, tmp_path / "ct", kv_cache=kv)
    assert not (tmp_path / "ct").exists()


def test_a_plan_reads_back_its_cache_precisions(tmp_path):
    path = tmp_path / "plan.json"
    option = parse_option("fp8_e4m3")
    path.write_text(json.dumps({
        "format": "mpsearch-plan", "version": 1, "provenance": {},
        "layers": [{"name": "model.layers.0.mlp.down_proj", **parse_option("fp16").to_dict()}],
        "kv_cache": [{"attention": a, "label": option.label, **option.to_dict()}
                     for a in ATTENTION]}))
    assert read_plan(path).kv_cache == dict.fromkeys(ATTENTION, option)


def test_kv_amax_reads_each_projection(tiny_llama_path):
    setup = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION)
    worker = plan_worker(setup, {"model.layers.0.mlp.down_proj": parse_option("fp16")})
    modules = {a: (worker.model.get_submodule(f"{a}.k_proj"),
                   worker.model.get_submodule(f"{a}.v_proj")) for a in ATTENTION}
    amax = kv_cache_amax_(worker.model, modules, worker.batches)
    assert set(amax) == set(ATTENTION) and all(k > 0 and v > 0 for k, v in amax.values())
    assert not any(m._forward_hooks for pair in modules.values() for m in pair)  # removed
