"""Routed experts in the space: expert genes and groups, vLLM's ties, active cost, spec errors."""

import pytest

from mpsearch.spaces import SpaceConfig, parse_option
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.experts import expert_group_for, expert_groups, expert_of
from mpsearch.spaces.runtime import restrict
from mpsearch.spaces.space import LayerInfo, LayerRule, SearchSpace, build_space

E = 4
MOE = [LayerInfo("model.layers.0.self_attn.q_proj", 64, 64),
       *(LayerInfo(f"model.layers.0.mlp.experts.{e}.{m}", 64, 128 if m == "gate_up_proj" else 64,
                   0.5) for m in ("gate_up_proj", "down_proj") for e in range(E)),
       LayerInfo("model.layers.0.mlp.shared_expert.gate_proj", 64, 64),
       LayerInfo("model.layers.0.mlp.shared_expert.up_proj", 64, 64)]
OPTIONS = (parse_option("int4-g32-sym"), parse_option("int8-ch-sym"), parse_option("fp16"))
RULES = [LayerRule(r"layers\.\d+\.", OPTIONS)]


def gene_names(space):
    return [sorted(ly.name.removeprefix("model.layers.0.mlp.") for ly in g.layers)
            for g in space.genes]


def test_expert_names_and_groups():
    assert expert_of("model.layers.3.mlp.experts.12.w1") == ("model.layers.3.mlp.experts", 12)
    assert expert_of("model.layers.3.mlp.shared_experts.gate_proj") is None
    names = [ly.name for ly in MOE]
    groups = expert_groups(names, 2)
    assert groups["model.layers.0.mlp.experts.3.down_proj"] == "model.layers.0.mlp.experts[2:4]"
    assert len(set(groups.values())) == 2 and "model.layers.0.self_attn.q_proj" not in groups


def test_each_expert_is_a_gene_or_a_group_and_vllm_ties_a_layers_experts():
    per_expert = build_space(MOE, RULES, (), expert_group=1)
    assert ["experts.1.down_proj", "experts.1.gate_up_proj"] in gene_names(per_expert)
    assert len(per_expert.genes) == 1 + E + 2
    pairs = build_space(MOE, RULES, (), expert_group=2)
    assert len(pairs.genes) == 1 + 2 + 2
    matrices = build_space(MOE, RULES, (), expert_group=None)
    assert len(matrices.genes) == len(MOE)
    vllm = restrict(RULES, [], "vllm", [ly.name for ly in MOE])
    space = build_space(MOE, vllm.rules, vllm.ties, expert_group=1)
    assert len(space.genes) == 3  # q; every expert of the layer; the shared expert's gate/up
    assert gene_names(space)[2] == ["shared_expert.gate_proj", "shared_expert.up_proj"]
    assert len(space.genes[1].layers) == 2 * E


def test_active_cost_is_additive_and_survives_the_stored_dict():
    space = build_space(MOE, RULES, (), total_params=100_000, expert_group=1)
    experts = E * (64 * 128 + 64 * 64)
    assert space.active_params == 100_000 - experts / 2
    c = space.uniform(OPTIONS[2])
    assert space.cost(c).active_bytes == sum(
        space.gene_active_bits(g, o) for g, o in enumerate(c.choices)) / 8 + (
        space.unsearched_params * 16) / 8
    again = SearchSpace.from_dict(space.to_dict())
    assert again == space and again.cost(c) == space.cost(c) and again.has_experts
    # experts not searched: their active share is kept with the space
    attn = build_space(MOE, [LayerRule("self_attn", OPTIONS)], (), total_params=100_000)
    assert attn.unsearched_active_params == attn.unsearched_params - experts / 2
    assert SearchSpace.from_dict(attn.to_dict()).active_params == attn.active_params
    # a dense space's stored dict is what it was before experts existed (old studies match)
    dense = build_space(MOE[:1], RULES, (), total_params=10_000)
    assert "unsearched_active_params" not in dense.to_dict()
    assert all(len(ly) == 3 for g in dense.to_dict()["genes"] for ly in g["layers"])
    assert dense.active_params == dense.total_params and not dense.has_experts


def test_expert_settings_on_a_dense_model_or_against_vllm_are_refused():
    names = [ly.name for ly in MOE]
    assert expert_group_for(names) == 1
    assert expert_group_for(names, "matrix", given=True) is None
    assert expert_group_for(["model.layers.0.mlp.up_proj"]) is None
    with pytest.raises(SpecError, match="space.experts: the model has no routed experts"):
        expert_group_for(["model.layers.0.mlp.up_proj"], given=True)
    with pytest.raises(SpecError, match="runtime vllm .* at least 4"):
        expert_group_for(names, "expert", 2, given=True, runtime="vllm")
    assert expert_group_for(names, "expert", 4, given=True, runtime="vllm") == 4
    with pytest.raises(ValueError, match="group"):
        SpaceConfig(experts={"group": 0})
    with pytest.raises(ValueError, match="per"):
        SpaceConfig(experts={"per": "layer"})
