"""Every option kind: effective bits against hand numbers, labels, mappings and refusals."""

import re

import pytest

from mpsearch.spaces import LayerInfo, LayerRule, QuantOption, SpecError, build_space, parse_option


@pytest.mark.parametrize("label,in_features,bits", [
    # integers: b + (16 scale [+ 16 zero]) / group; clipping and GPTQ store the same
    ("int4-g128-asym", 4096, 4 + 32 / 128),
    ("int4-g128-asym-gptq", 4096, 4.25),
    ("int3-g64-asym-gptq-act", 4096, 3.5),  # activation order: the same layout again
    ("int3-g64-sym-clip", 4096, 3 + 16 / 64),
    ("int2-g32-asym", 64, 2 + 32 / 32),
    ("int8-ch-sym", 512, 8 + 16 / 512),
    # floats: FP8 with an fp16 scale per output channel; FP4 / NF4 with block scales
    ("fp8_e4m3", 512, 8 + 16 / 512),
    ("fp8_e5m2", 1024, 8 + 16 / 1024),
    ("nvfp4", 4096, 4 + 8 / 16),  # E4M3 scale per 16 (the fp32 tensor scale is not charged)
    ("mxfp4", 4096, 4 + 8 / 32),  # E8M0 scale per 32
    ("nf4", 4096, 4 + 16 / 64),  # fp16 absmax per 64
    ("fp16", 384, 16),
    # 2:4: per 4 weights, 2 values and a 2-bit index for each; scales over the full groups
    ("int4-g128-asym+2:4", 4096, (2 * 4 + 2 * 2) / 4 + 32 / 128),  # 3.25
    ("fp16+2:4", 512, (2 * 16 + 2 * 2) / 4),  # 9
    ("nvfp4+2:4-wanda", 4096, (2 * 4 + 2 * 2) / 4 + 8 / 16),  # 3.5
    # unstructured: kept values + min(1-bit bitmap, CSR: ⌈log2 in⌉ per kept value + 32 / in) + scales
    ("int8-ch-sym+s50", 512, 0.5 * 8 + 1 + 16 / 512),  # bitmap: 1 < 0.5·9 + 32/512
    ("fp16+s95", 1024, 0.05 * 16 + (0.05 * 10 + 32 / 1024)),  # CSR: 0.53125 < 1
    ("nf4+s12.5-wanda", 4096, 0.875 * 4 + 1 + 16 / 64),
    ("int4-g128-sym+s90", 128, 0.1 * 4 + (0.1 * 7 + 32 / 128) + 16 / 128),  # CSR 0.95 < 1
])
def test_effective_bits_by_hand(label, in_features, bits):
    assert parse_option(label).effective_bits(in_features) == pytest.approx(bits, abs=1e-12)


LABELS = ["int4-g128-asym", "int4-g128-asym-gptq", "int4-g128-asym-gptq-act", "int3-g64-sym-clip",
          "int8-ch-sym", "fp16",
          "fp8_e4m3", "fp8_e5m2", "nvfp4", "mxfp4", "nf4", "int4-g128-asym+2:4", "int8-ch-sym+s50",
          "int2-ch-asym-clip+s12.5-wanda", "nf4+2:4-wanda", "fp16+s70", "mxfp4+s0.1",
          "int3-ch-sym-gptq-act+2:4", "w8a8-int8-gptq-act", "int3-g64-asym-clip-gptq",
          "int2-g128-asym-clip-gptq-act", "int4-ch-sym-clip-gptq+2:4", "w8a8-int8-clip-gptq"]


def test_labels_round_trip_and_are_unique():
    options = [parse_option(label) for label in LABELS]
    assert [o.label for o in options] == LABELS
    assert all(parse_option(o.label) == o for o in options)
    assert all(QuantOption.from_dict(o.to_dict()) == o for o in options)
    assert len({hash(o) for o in options}) == len(set(options)) == len(LABELS)


def test_mappings_take_the_new_keys_and_fixed_formats_fill_their_layout():
    assert parse_option({"format": "nf4"}) == parse_option("nf4")
    assert parse_option({"format": "nf4", "bits": 4, "group_size": 64}).group_size == 64
    assert parse_option({"format": "fp8_e4m3"}).bits == 8
    assert parse_option({"format": "fp16", "bits": 16, "group_size": None}) == parse_option("fp16")
    assert parse_option({"bits": 3, "group_size": 64, "symmetric": True, "clip": True}) == \
        parse_option("int3-g64-sym-clip")
    assert parse_option({"sparsity_pattern": "2:4", "sparsity_method": "wanda"}) == \
        parse_option("int4-g128-asym+2:4-wanda")
    assert parse_option({"sparsity": 0.5, "rounding": "gptq"}).label == "int4-g128-asym-gptq+s50"
    assert parse_option({"bits": 3, "rounding": "gptq-act"}) == parse_option("int3-g128-asym-gptq-act")
    assert parse_option("int4-g128-asym-gptq-act").gptq and parse_option("int4-g128-asym-gptq").gptq
    assert not parse_option("int4-g128-asym-clip").gptq
    both = parse_option({"bits": 3, "group_size": 64, "clip": True, "rounding": "gptq-act"})
    assert both == parse_option("int3-g64-asym-clip-gptq-act") and both.clip and both.act_order


def test_dicts_saved_before_the_new_fields_still_load():
    old = {"format": "int", "bits": 4, "group_size": 128, "symmetric": False}
    assert QuantOption.from_dict(old) == parse_option("int4-g128-asym")
    assert QuantOption.from_dict({"format": "fp16", "bits": 16, "group_size": None,
                                  "symmetric": False}) == parse_option("fp16")


@pytest.mark.parametrize("value,message", [
    ("int4-g128-asym-gptq-clip", "not a label"),
    ("int4-g128-asym+s50-magnitude", "not '2:4'"),
    ("fp4", "not a label"),
    ("int4-g128-asym-gptq-clip-act", "not a label"),
    ("int4-g128-asym-act", "not a label"),
    ("int4-g128-asym-gptq-act-clip", "not a label"),
    ("int4-g128-asym-clip-clip-gptq", "not a label"),
    ({"format": "nf4", "group_size": 32}, "nf4 has group_size=64"),
    ({"format": "mxfp4", "bits": 8}, "mxfp4 has bits=4"),
    ({"format": "fp8_e4m3", "symmetric": True}, "symmetric applies to format int only"),
    ({"format": "nvfp4", "clip": True}, "clip applies to format int only"),
    ({"rounding": "awq"}, "rounding must be one of rtn, gptq, gptq-act"),
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": 0.1234}, "multiple of 0.001"),
    ({"sparsity_method": "wanda"}, "needs sparsity > 0"),
    ({"sparsity_pattern": "2:4", "sparsity": 0.3}, "2:4 has sparsity 0.5"),
    ({"sparsity_pattern": 124}, "write '2:4'"),  # what YAML makes of an unquoted 2:4
    ({"bits": "four"}, "option"),
    ({"format": "int", "block": 32}, "unknown option keys"),
])
def test_impossible_options_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_option(value)


@pytest.mark.parametrize("label,in_features,reason", [
    ("int4-g128-asym", 96, "group size 128 does not divide in_features=96"),
    ("nvfp4", 24, "nvfp4 block size 16 does not divide in_features=24"),
    ("mxfp4", 48, "mxfp4 block size 32 does not divide in_features=48"),
    ("nf4", 96, "nf4 block size 64 does not divide in_features=96"),
    ("fp16+2:4", 6, "2:4 sparsity needs in_features divisible by 4"),
    ("int8-ch-sym+2:4", 10, "2:4 sparsity needs in_features divisible by 4"),
])
def test_accepts_refuses_what_a_layer_cannot_store(label, in_features, reason):
    assert reason in parse_option(label).accepts(in_features)


@pytest.mark.parametrize("label,in_features", [
    ("fp8_e4m3", 7), ("fp16", 3), ("int4-ch-asym", 100), ("fp16+s50", 6), ("nvfp4+2:4", 32)])
def test_accepts_what_a_layer_can_store(label, in_features):
    assert parse_option(label).accepts(in_features) is None


@pytest.mark.parametrize("label,in_features,reason", [
    ("nf4", 96, "nf4 block size 64 does not divide in_features=96"),
    ("fp16+2:4", 6, "2:4 sparsity needs in_features divisible by 4"),
])
def test_build_space_names_the_layer_that_cannot_take_an_option(label, in_features, reason):
    layers = [LayerInfo("blocks.0.fine", 128, 64), LayerInfo("blocks.0.odd", in_features, 64)]
    pattern = rf"option {re.escape(label)} .* layer blocks\.0\.odd: {re.escape(reason)}"
    with pytest.raises(SpecError, match=pattern):
        build_space(layers, [LayerRule("blocks", (parse_option("fp16"), parse_option(label)))])
