"""W8A8 options in the compressed-tensors export: their groups carry the per-token dynamic
input_activations vLLM serves, the int8/FP8 codes are the scored ones, and a fresh transformers
process that loads a W8A8-FP8 checkpoint reproduces the trial (its activations quantized there).

transformers runs an int8 W8A8 checkpoint with compressed-tensors' own per-token scale, absmax /
127.5, where vLLM (and the scoring) use absmax / 127: that round trip differs by design."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mpsearch.spaces import parse_option
from mpsearch.workers.export_ct import export_compressed_tensors

from .test_export_ct import rescore_in_fresh_process

LABELS = ("w8a8-int8", "w8a8-fp8", "int4-g32-sym", "fp16")
TOKEN = {"num_bits": 8, "symmetric": True, "strategy": "token", "dynamic": True}


@pytest.mark.slow
def test_w8a8_export_carries_the_activation_schemes(tiny_llama_path, tmp_path, scored_trial):
    worker, options, _, _ = scored_trial(tiny_llama_path, "kl", "float32", LABELS)
    export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    by_label = {}
    for group in config["config_groups"].values():
        label = options[group["targets"][0]].label
        assert {options[t].label for t in group["targets"]} == {label}
        by_label[label] = group
    for label, kind in (("w8a8-int8", "int"), ("w8a8-fp8", "float")):
        args = by_label[label]["input_activations"]
        assert {k: args[k] for k in (*TOKEN, "type")} == {**TOKEN, "type": kind}
        assert by_label[label]["format"] == f"{kind}-quantized"
        assert by_label[label]["weights"]["strategy"] == "channel"
    assert by_label["int4-g32-sym"].get("input_activations") is None

    tensors = {}
    for f in (tmp_path / "ct").glob("*.safetensors"):
        tensors.update(load_file(f))
    for name, option in options.items():
        if option.activations:
            enc = worker.encoded(name, option)
            assert torch.equal(tensors[f"{name}.weight"].float(), enc.values.float()), name

    fp8 = parse_option("w8a8-fp8")  # the int8 layers as FP8: a checkpoint transformers runs as scored
    plan = {n: fp8 if o.activations == "int8" else o for n, o in options.items()}
    stored = worker.evaluate(worker.space.encode(plan)).objective
    assert stored is not None
    export_compressed_tensors(worker.setup, plan, tmp_path / "fp8")
    value = rescore_in_fresh_process(worker, tmp_path / "fp8", tmp_path)
    assert value == pytest.approx(stored, rel=1e-4)
