"""Runtime profiles: options a runtime cannot load are removed (and named), fused layers tied."""

import pytest

from mpsearch.spaces import parse_option
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.runtime import fused_conflicts, refusal, restrict
from mpsearch.spaces.space import LayerInfo, LayerRule, build_space

LLAMA = [LayerInfo(f"model.layers.{i}.{part}", 64, 64) for i in range(2) for part in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
OPTIONS = tuple(parse_option(label) for label in (
    "int4-g32-sym", "int4-g32-asym", "int3-g32-sym", "int8-ch-sym-gptq", "nf4", "fp8_e4m3",
    "q4_0", "fp16", "int4-g32-sym+2:4"))


def names(options) -> set[str]:
    return {o.label for o in options}


def test_each_runtime_keeps_what_it_loads_and_names_what_it_removes():
    rules = [LayerRule(r"layers\.\d+\.", OPTIONS)]
    vllm = restrict(rules, [], "vllm", [layer.name for layer in LLAMA])
    assert names(vllm.rules[0].options) == {"int4-g32-sym", "int8-ch-sym-gptq", "fp8_e4m3", "fp16"}
    assert set(vllm.removed) == names(OPTIONS) - names(vllm.rules[0].options)
    assert "symmetric 4- and 8-bit" in vllm.removed["int4-g32-asym"]
    transformers = restrict(rules, [], "transformers")
    assert names(transformers.rules[0].options) == {"int4-g32-sym", "int4-g32-asym", "int3-g32-sym",
                                                    "int8-ch-sym-gptq", "fp8_e4m3", "fp16"}
    llama_cpp = restrict(rules, [], "llama.cpp")
    assert names(llama_cpp.rules[0].options) == {"int4-g32-sym", "q4_0", "fp16"}
    assert restrict(rules, ["x"], None).rules == rules  # no runtime: the spec as written
    with pytest.raises(SpecError, match=r"space.layers\[0\].*runtime llama.cpp loads none of its "
                                        "options \\(nf4, fp8_e4m3\\)"):
        restrict([LayerRule(".", (parse_option("nf4"), parse_option("fp8_e4m3")))], [],
                 "llama.cpp")
    with pytest.raises(SpecError, match="space.runtime: 'onnx' is not one of vllm"):
        refusal("onnx", OPTIONS[0])


def test_vllm_ties_fused_shards_and_a_fused_plan_that_differs_is_refused():
    rules = [LayerRule(r"layers\.\d+\.", OPTIONS)]
    vllm = restrict(rules, [], "vllm", [layer.name for layer in LLAMA])
    space = build_space(LLAMA, vllm.rules, vllm.ties)
    assert len(space.genes) == 2 * 4  # per block: qkv, o, gate_up, down
    qkv = next(g for g in space.genes if any(lay.name.endswith("q_proj") for lay in g.layers))
    assert sorted(lay.name.rsplit(".", 1)[1] for lay in qkv.layers) == ["k_proj", "q_proj",
                                                                        "v_proj"]
    # the profile on: q and k given different option lists cannot be tied, refused at spec time
    split = [LayerRule(r"q_proj", (parse_option("int4-g32-sym"),)),
             LayerRule(r"layers\.\d+\.", (parse_option("int8-ch-sym"),))]
    profile = restrict(split, [], "vllm", [layer.name for layer in LLAMA])
    with pytest.raises(SpecError, match="tied layers .* have different options"):
        build_space(LLAMA, profile.rules, profile.ties)
    # the profile off: the same mix is a plan export refuses for vLLM
    plan = {"model.layers.0.self_attn.q_proj": parse_option("int4-g32-sym"),
            "model.layers.0.self_attn.k_proj": parse_option("int8-ch-sym"),
            "model.layers.0.self_attn.v_proj": parse_option("int4-g32-sym"),
            "model.layers.0.mlp.gate_proj": parse_option("fp16"),
            "model.layers.0.mlp.up_proj": parse_option("fp16")}
    (message,) = fused_conflicts(plan)
    assert message.startswith("model.layers.0.self_attn: vLLM fuses these layers")
    assert "k_proj=int8-ch-sym" in message


def test_a_spec_tie_over_the_same_layers_is_kept_and_not_doubled():
    rules = [LayerRule(r"layers\.\d+\.", OPTIONS)]
    own = r"layers\.(\d+)\.self_attn\.(?:q_proj|k_proj|v_proj|o_proj)"
    vllm = restrict(rules, [own], "vllm", [layer.name for layer in LLAMA])
    assert vllm.ties[0] == own and not any("self_attn" in t for t in vllm.ties[1:])
    build_space(LLAMA, vllm.rules, vllm.ties)  # no layer matched by two tie patterns



def test_vllm_adds_no_tie_for_layers_no_rule_searches():
    rules = [LayerRule(r"mlp\.", OPTIONS)]
    vllm = restrict(rules, [], "vllm", [layer.name for layer in LLAMA])
    assert vllm.ties == [r"^(.*\.mlp)\.(?:gate_proj|up_proj)$"]
    space = build_space(LLAMA, vllm.rules, vllm.ties)  # a q/k/v tie would match no searched layer
    assert len(space.genes) == 2 * 2
