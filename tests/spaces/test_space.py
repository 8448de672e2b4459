"""The search space and its cost model, against numbers computed by hand."""

import sys

import pytest

from mpsearch.spaces import (
    Budget,
    BudgetError,
    Candidate,
    LayerInfo,
    LayerRule,
    QuantOption,
    SpecError,
    build_space,
    parse_option,
)

INT4 = parse_option("int4-g128-asym")
INT3 = parse_option("int3-g128-asym")
INT8 = parse_option("int8-g128-asym")
FP16 = parse_option("fp16")

LAYERS = [
    LayerInfo("blocks.0.attn.q", 256, 256),
    LayerInfo("blocks.0.attn.k", 256, 256),
    LayerInfo("blocks.0.mlp.up", 256, 1024),
    LayerInfo("blocks.0.mlp.down", 1024, 256),
    LayerInfo("head", 256, 10),
]


def test_effective_bits_by_hand():
    assert INT4.effective_bits(4096) == 4.25  # 4 + (16 scale + 16 zero) / 128
    assert parse_option("int4-g128-sym").effective_bits(4096) == 4.125  # 4 + 16/128
    assert parse_option("int3-g64-asym").effective_bits(4096) == 3.5  # 3 + 32/64
    assert parse_option("int8-ch-sym").effective_bits(512) == 8 + 16 / 512  # one scale per row
    assert parse_option("int2-ch-asym").effective_bits(384) == 2 + 32 / 384
    assert FP16.effective_bits(384) == 16.0


def test_labels_round_trip():
    for label in ["int4-g128-asym", "int3-ch-sym", "int8-g32-asym", "fp16"]:
        assert parse_option(label).label == label


def test_bad_option_labels_are_refused():
    with pytest.raises(ValueError, match="not a label"):
        parse_option("int4-g128")
    with pytest.raises(ValueError, match="bits must be"):
        parse_option("int9-g128-asym")


def space(ties=()):
    rules = [LayerRule(r"blocks\.\d+\.", (INT3, INT4, INT8, FP16))]
    return build_space(LAYERS, rules, ties, total_params=sum(ly.numel for ly in LAYERS) + 1000)


def test_cost_counts_searched_and_unsearched_bytes():
    s = space()
    assert [g.name for g in s.genes] == ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.mlp.up",
                                         "blocks.0.mlp.down"]
    searched = 256 * 256 * 2 + 256 * 1024 * 2
    assert s.searched_params == searched
    assert s.unsearched_params == 256 * 10 + 1000  # the head and the extra parameters
    c = s.uniform(INT4)
    cost = s.cost(c)
    assert cost.avg_bits == pytest.approx(4.25)
    assert cost.total_bytes == pytest.approx((searched * 4.25 + s.unsearched_params * 16) / 8)
    # mixed: q at 8 bits, k at 3, the MLP at 4: weights average by size
    mixed = Candidate((2, 0, 1, 1))
    expected = (256 * 256 * (8.25 + 3.25) + 2 * 256 * 1024 * 4.25) / searched
    assert s.cost(mixed).avg_bits == pytest.approx(expected)


def test_budget_feasibility_and_minimum():
    s = space()
    assert s.feasible(s.uniform(INT4), Budget(avg_bits=4.25))
    assert not s.feasible(s.uniform(INT8), Budget(avg_bits=4.25))
    assert s.feasible(s.uniform(INT3), Budget(total_bytes=s.cost(s.uniform(INT3)).total_bytes))
    s.check_budget(Budget(avg_bits=3.25))
    with pytest.raises(BudgetError, match=r"cheapest configuration.*avg_bits 3\.2500"):
        s.check_budget(Budget(avg_bits=3.0))


def test_encode_decode_round_trip():
    s = space()
    c = Candidate((0, 3, 1, 2))
    decoded = s.decode(c)
    assert decoded["blocks.0.attn.q"] == INT3 and decoded["blocks.0.mlp.down"] == INT8
    assert s.encode(decoded) == c
    assert s.from_dict(s.to_dict()).decode(c) == decoded


def test_tie_groups_share_one_choice():
    s = space(ties=[r"blocks\.(\d+)\.attn\.(?:q|k)"])
    assert len(s.genes) == 3
    assert [ly.name for ly in s.genes[0].layers] == ["blocks.0.attn.q", "blocks.0.attn.k"]
    decoded = s.decode(Candidate((0, 1, 1)))
    assert decoded["blocks.0.attn.q"] == decoded["blocks.0.attn.k"] == INT3
    with pytest.raises(ValueError, match="different options"):
        s.encode({**decoded, "blocks.0.attn.k": INT4})


def test_regex_matching_no_layer_is_named():
    with pytest.raises(SpecError, match=r"'decoder\\\.' matches no quantizable layer"):
        build_space(LAYERS, [LayerRule(r"decoder\.", (INT4,))])


def test_option_a_layer_cannot_take_names_the_layer():
    odd = [LayerInfo("blocks.0.odd", 100, 64)]
    with pytest.raises(SpecError, match=r"blocks\.0\.odd.*does not divide in_features=100"):
        build_space(odd, [LayerRule("blocks", (QuantOption("int", 4, 128),))])


def test_importing_spaces_and_searcher_loads_neither_torch_nor_ray():
    import subprocess

    code = ("import sys, mpsearch.spaces, mpsearch.searcher; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
