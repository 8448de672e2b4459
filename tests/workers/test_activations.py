"""W8A8 options against a hand-written per-token quantizer, scored inside a real worker."""

from __future__ import annotations

import math

import pytest
import torch

from mpsearch.spaces import Candidate, parse_option
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.workers.activations import quantize_per_token

EXPORT_CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}


def _e4m3_values() -> list[float]:
    """Every finite non-negative FP8 E4M3 value (OCP: bias 7, no infinities, S.1111.111 NaN)."""
    out = [m / 8 * 2.0 ** -6 for m in range(8)]  # subnormals
    out += [(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8)
            if not (e == 15 and m == 7)]
    return sorted(out)


E4M3 = _e4m3_values()


def _round_e4m3(v: float) -> float:
    """Round to nearest E4M3 value, ties to the even code, saturating at 448."""
    a = min(abs(v), 448.0)
    i = min(range(len(E4M3)), key=lambda k: (abs(E4M3[k] - a), k % 2))  # index parity = code's
    return math.copysign(E4M3[i], v)


def reference(x: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-token quantize-dequantize written out row by row in Python floats."""
    rows = []
    for row in x.reshape(-1, x.shape[-1]).tolist():
        amax = max(abs(v) for v in row)
        if scheme == "int8":
            s = float(torch.tensor(amax / 127, dtype=torch.float32).clamp_min(1e-38))
            rows.append([min(max(round(v / s), -128), 127) * s for v in row])
        else:
            s = max(amax / 448, 1 / (448 * 512))
            rows.append([_round_e4m3(v / s) * s for v in row])
    return torch.tensor(rows, dtype=torch.float32).reshape(x.shape)


@pytest.mark.parametrize("scheme", ["int8", "fp8_e4m3"])
def test_per_token_quantization_matches_the_hand_written_reference(scheme):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 24, generator=g) * torch.logspace(-3, 2, 24)
    x[1, 2] = 0.0  # an all-zero token: zeros, not NaN
    got = quantize_per_token(x, scheme)
    torch.testing.assert_close(got, reference(x, scheme), rtol=1e-6, atol=1e-30)
    assert torch.equal(got[1, 2], torch.zeros(24))
    codes = torch.unique(got[0, 0] / got[0, 0].abs().max())  # few distinct levels per token
    assert len(codes) <= (256 if scheme == "int8" else 253)


def test_labels_and_costs_of_the_w8a8_options():
    int8, fp8 = parse_option("w8a8-int8"), parse_option("w8a8-fp8")
    assert int8 == QuantOption("int", 8, None, True, activations="int8")
    assert fp8 == QuantOption("fp8_e4m3", activations="fp8_e4m3")
    assert parse_option("w8a8-int8-gptq").rounding == "gptq"
    for option, weights in ((int8, "int8-ch-sym"), (fp8, "fp8_e4m3")):
        assert QuantOption.from_label(option.label) == option
        assert option.effective_bits(512) == parse_option(weights).effective_bits(512)
    with pytest.raises(ValueError, match="activations int8 goes with int8-ch-sym"):
        QuantOption("int", 4, 128, True, activations="int8")
    with pytest.raises(ValueError, match="dense weights"):
        QuantOption("fp8_e4m3", sparsity=0.5, activations="fp8_e4m3")


def test_a_worker_scores_w8a8_with_the_inputs_quantized(tiny_llama_path):
    from mpsearch.workers.checkpoint import scoring_setup
    from mpsearch.workers.config import ModelConfig
    from mpsearch.workers.model_loading import inspect_model
    from mpsearch.workers.worker import Worker

    info = inspect_model(ModelConfig(name=tiny_llama_path))
    labels = ("int8-ch-sym", "w8a8-int8", "fp8_e4m3", "w8a8-fp8", "fp16")
    space = build_space(info.layers, [LayerRule(r"\.\d+\.", tuple(parse_option(v) for v in labels))])
    worker = Worker(scoring_setup(tiny_llama_path, "auto", "kl", EXPORT_CALIBRATION, "float32"),
                    space)
    name = "model.layers.1.mlp.down_proj"
    g = [i for i, gene in enumerate(space.genes) if gene.name == name][0]
    module = worker.modules[name]
    seen: dict[str, torch.Tensor] = {}
    module.register_forward_pre_hook(lambda _m, a: seen.__setitem__("x", a[0].detach().clone()))
    module.register_forward_hook(lambda _m, _a, y: seen.__setitem__("y", y.detach().clone()))

    def at(label: str) -> Candidate:
        top = len(labels) - 1
        return Candidate(tuple(labels.index(label) if i == g else top for i in range(len(space.genes))))

    scores = {}
    for label in labels:
        scores[label] = worker.evaluate(at(label)).objective
        option = parse_option(label)
        x = seen["x"]
        expected_x = reference(x, option.activations) if option.activations else x
        expected = torch.nn.functional.linear(expected_x, worker.variant(name, option))
        torch.testing.assert_close(seen["y"], expected, rtol=1e-5, atol=1e-6)
    assert scores["fp16"] < scores["int8-ch-sym"]
    # the inputs' quantization changes the objective (either way: errors of one layer can cancel)
    assert scores["w8a8-int8"] != scores["int8-ch-sym"] and scores["w8a8-fp8"] != scores["fp8_e4m3"]
    assert worker.evaluate(at("int8-ch-sym")).objective == scores["int8-ch-sym"]  # hook gone


def test_weight_only_options_keep_the_stored_form_of_studies_before_w8a8():
    from mpsearch.cluster.spec import parse_spec

    spec = parse_spec({"study": "s", "space": {"layers": [{"match": "x", "options": [
        "int4-g128-asym", "w8a8-int8"]}]}, "budget": {"avg_bits": 4}})
    stored, w8a8 = spec.identity()["space"]["layers"][0]["options"]
    assert "activations" not in stored and w8a8["activations"] == "int8"
    assert "activations" not in parse_option("int4-g128-asym").to_dict()
    assert QuantOption.from_dict(parse_option("w8a8-fp8").to_dict()) == parse_option("w8a8-fp8")


def test_runtimes_that_load_w8a8():
    from mpsearch.spaces.runtime import refusal

    for label in ("w8a8-int8", "w8a8-fp8"):
        assert refusal("vllm", parse_option(label)) is None
        assert refusal("llama.cpp", parse_option(label)) is not None
