"""The format registry: one handler per format; stored parts that rebuild the scored weight exactly."""

import pytest
import torch

from mpsearch.spaces import parse_option
from mpsearch.spaces.options import FORMATS
from mpsearch.workers.gptq import HessianAccumulator
from mpsearch.workers.registry import (
    ACT_NORM,
    HANDLERS,
    HESSIAN,
    FormatError,
    LayerInputs,
    handler_for,
    needs_calibration,
)

LABELS = ["fp16", "int4-g32-asym", "int3-ch-sym", "int4-g64-asym-clip", "int8-ch-asym",
          "fp8_e4m3", "fp8_e5m2", "nvfp4", "mxfp4", "nf4", "int4-g32-asym+2:4", "nf4+s30",
          "mxfp4+s50-wanda", "int4-g32-asym-gptq", "int3-ch-sym-gptq", "int4-g64-sym-gptq+2:4-wanda",
          "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_0+2:4"]


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    X = torch.randn(256, 128) * torch.linspace(0.1, 2.0, 128)
    w = torch.randn(24, 128) * 0.05
    w[5] = 0  # an all-zero row: scales floor, codes stay finite
    acc = HessianAccumulator(128)
    acc.add(X)
    return w, LayerInputs(hessian=acc.H, act_norm=acc.act_norm, gptq_block_size=64)


def test_every_format_has_exactly_one_handler_and_unknown_names_list_the_valid_ones():
    assert set(HANDLERS) == set(FORMATS)
    assert handler_for("int") is handler_for(parse_option("int4-g128-asym"))
    with pytest.raises(FormatError, match="no handler for format 'q9_9'; valid: .*nvfp4"):
        handler_for("q9_9")


@pytest.mark.parametrize("label", LABELS)
def test_stored_parts_rebuild_exactly_the_scored_weight(layer, label):
    w, inputs = layer
    option = parse_option(label)
    handler = handler_for(option)
    for dtype in (torch.float32, torch.bfloat16):
        scored = handler.quantize(w.to(dtype), option, inputs)
        enc = handler.encode(w.to(dtype), option, inputs)
        assert scored.dtype == dtype and torch.isfinite(scored).all()
        assert torch.equal(enc.dequantize(dtype), scored), dtype
    if option.sparse:
        assert enc.mask is not None and torch.equal(scored != 0, (scored != 0) & enc.mask)
    if option.format == "int":
        lo, hi = (-(2 ** (option.bits - 1)), 2 ** (option.bits - 1) - 1) if option.symmetric \
            else (0, 2**option.bits - 1)
        assert torch.equal(enc.values, enc.values.round())
        assert enc.values.min() >= lo and enc.values.max() <= hi
        groups = w.shape[1] // option.group_for(w.shape[1])
        assert enc.scale.shape == (w.shape[0], groups)
        assert (enc.zero_point is None) == option.symmetric
        assert torch.equal(enc.scale, enc.scale.half().float())  # scales are stored as fp16


def test_handlers_name_the_statistics_their_options_need():
    def needs(label):
        option = parse_option(label)
        return handler_for(option).statistics(option)
    assert needs("int4-g32-asym") == needs("nf4") == needs("fp16+2:4") == frozenset()
    assert needs("int4-g32-asym-gptq") == {HESSIAN}
    assert needs("mxfp4+s50-wanda") == {ACT_NORM}
    assert needs("int4-ch-sym-gptq+s50-wanda") == {HESSIAN, ACT_NORM}
    assert needs_calibration(parse_option("int4-g32-asym-gptq"))
    assert not needs_calibration(parse_option("int4-g32-asym+2:4"))


def test_gptq_without_its_hessian_is_refused_naming_the_option(layer):
    w, _ = layer
    option = parse_option("int4-g32-asym-gptq")
    with pytest.raises(FormatError, match="int4-g32-asym-gptq: gptq rounding needs"):
        handler_for(option).encode(w, option)


def test_cost_comes_from_the_options_table():
    for label in LABELS:
        option = parse_option(label)
        assert handler_for(option).effective_bits(option, 128) == option.effective_bits(128)


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_gguf_block_formats_match_gguf_quantizer_bit_for_bit(layer, fmt):
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    w, _ = layer
    option = parse_option(fmt)
    kind = GGMLQuantizationType[fmt.upper()]
    reference = quants.dequantize(quants.quantize(w.numpy(), kind), kind)
    got = handler_for(option).quantize(w, option)
    np.testing.assert_array_equal(got.numpy(), reference)
    bits = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q8_0": 34}[fmt] * 8 / 32
    assert option.effective_bits(128) == bits  # ggml's block bytes per 32 weights
