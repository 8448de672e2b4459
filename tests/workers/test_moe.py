"""MoE experts: discovered in both layouts, costed by total and active parameters, quantized and
applied as the same matrices as Linears, and routing counted (workers/layers.py, workers/moe.py)."""

import pytest
import torch
from torch import nn

from mpsearch.spaces import LayerRule, build_space, parse_option
from mpsearch.workers.layers import ExpertSlice, discover_layers, quantizable_targets
from mpsearch.workers.moe import count_routes
from mpsearch.workers.registry import LayerInputs, quantize_weight
from mpsearch.workers.worker import Worker, WorkerSetup

# the tiny Mixtral: hidden, intermediate, experts, top-k, blocks, vocabulary
H, FF, E, K, L, V = 64, 64, 4, 2, 2, 128
INT4 = parse_option("int4-g32-asym")
GPTQ = parse_option("int4-g32-asym-gptq")
FP16 = parse_option("fp16")


class LinearExpert(nn.Module):
    """One Mixtral expert as separate Linears (transformers 4.x's w1/w3/w2)."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(H, FF, bias=False), nn.Linear(H, FF, bias=False)
        self.w2 = nn.Linear(FF, H, bias=False)
        self.w1.weight.data, self.w3.weight.data = gate_up[:FF].clone(), gate_up[FF:].clone()
        self.w2.weight.data = down.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class LinearExperts(nn.ModuleList):
    """A layer's experts as a ModuleList of Linears, called as the fused module is (tokens in
    the fused eager loop's order: by top-k slot, then token)."""

    def forward(self, hidden, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden)
        for e, expert in enumerate(self):
            slot, token = torch.where(top_k_index.t() == e)
            if len(token):
                y = expert(hidden[token]) * top_k_weights[token, slot, None]
                out.index_add_(0, token, y)
        return out


def models(tiny_mixtral):
    """The same tiny Mixtral twice: fused 3-D experts, and a separate Linear per expert matrix."""
    torch.manual_seed(0)
    fused = tiny_mixtral(V, E, K)
    linear = tiny_mixtral(V, E, K)
    linear.load_state_dict(fused.state_dict())
    for layer in linear.model.layers:
        ex = layer.mlp.experts
        layer.mlp.experts = LinearExperts([LinearExpert(ex.gate_up_proj.data[e],
                                                        ex.down_proj.data[e]) for e in range(E)])
    return fused, linear


def batches(pad: bool = False):
    torch.manual_seed(1)
    ids = torch.randint(1, V, (4, 12))
    mask = torch.ones_like(ids)
    if pad:
        mask[1, 8:] = 0
    return [{"input_ids": ids, "attention_mask": mask}]


def worker(model, space, pad: bool = False):
    setup = WorkerSetup(model_path="-", kind="causal-lm", objective="kl", texts=(), seq_len=12)
    return Worker(setup, space, model=model, batches=batches(pad))


def space_of(model, group=1, rules=None):
    rules = rules or [LayerRule(r"layers\.\d+\.", (INT4, GPTQ, FP16))]
    return build_space(discover_layers(model), rules, (), sum(p.numel() for p in model.parameters()),
                       expert_group=group)


def test_experts_are_discovered_in_both_layouts_with_their_active_fraction(mixtral):
    fused, linear = models(mixtral)
    got = {ly.name: ly for ly in discover_layers(fused)}
    gate_up, down = got["model.layers.1.mlp.experts.3.gate_up_proj"], got[
        "model.layers.1.mlp.experts.3.down_proj"]
    assert (gate_up.out_features, gate_up.in_features, gate_up.active) == (2 * FF, H, K / E)
    assert (down.out_features, down.in_features) == (H, FF)
    assert sum(".experts." in n for n in got) == L * E * 2
    assert got["model.layers.0.self_attn.q_proj"].active == 1.0
    target = quantizable_targets(fused)["model.layers.1.mlp.experts.3.down_proj"]
    assert isinstance(target, ExpertSlice) and target.index == 3
    split = {ly.name: ly for ly in discover_layers(linear)}
    assert sum(".experts." in n for n in split) == L * E * 3
    assert split["model.layers.0.mlp.experts.2.w3"].active == K / E
    # the model builds its experts on the meta device too (the driver inspects shapes only)
    with torch.device("meta"):
        meta = mixtral(V, E, K)
    assert [ly.name for ly in discover_layers(meta)] == list(got)


def test_total_and_active_cost_match_a_hand_count(mixtral):
    fused, linear = models(mixtral)
    attn = H * H + 2 * (H // 2) * H + H * H  # q, k, v (2 KV heads of 16), o
    experts = E * (2 * FF * H + H * FF)
    total = 2 * V * H + L * (attn + experts + E * H + 2 * H) + H  # + router, norms; final norm
    for model in (fused, linear):
        space = space_of(model)
        assert space.total_params == total == sum(p.numel() for p in model.parameters())
        assert space.active_params == total - L * experts * (1 - K / E)
        assert len(space.genes) == L * 4 + L * E  # one gene per attention layer, per expert
        cost = space.cost(space.uniform(INT4))
        unsearched = total - L * (attn + experts)
        assert cost.total_bytes == (L * (attn + experts) * 5 + unsearched * 16) / 8
        assert cost.active_bytes == (L * (attn + experts * K / E) * 5 + unsearched * 16) / 8
    # experts left out of the search still count K/E of theirs in the active parameters
    attn_only = space_of(fused, rules=[LayerRule(r"self_attn", (INT4, FP16))])
    assert attn_only.active_params == total - L * experts * (1 - K / E)
    cost = attn_only.cost(attn_only.uniform(INT4))
    assert cost.active_bytes == (L * attn * 5 + (total - L * attn - L * experts * K / E) * 16) / 8
    grouped = space_of(fused, group=2)
    assert len(grouped.genes) == L * 4 + L * E // 2
    assert sorted(ly.name.split(".")[5] for ly in grouped.genes[-1].layers) == ["2", "2", "3", "3"]


def test_a_fused_expert_is_quantized_and_applied_as_the_same_matrices_as_linears(mixtral):
    fused, linear = models(mixtral)
    fs, ls = space_of(fused), space_of(linear)
    fw, lw = worker(fused, fs), worker(linear, ls)
    prefix = "model.layers.0.mlp.experts.1"
    W = fused.model.layers[0].mlp.experts.gate_up_proj.data[1].clone()
    q = fw.variant(f"{prefix}.gate_up_proj", INT4)
    assert torch.equal(q, quantize_weight(W, INT4))
    assert torch.equal(q, torch.cat([lw.variant(f"{prefix}.w1", INT4),
                                     lw.variant(f"{prefix}.w3", INT4)]))
    assert torch.equal(fw.variant(f"{prefix}.down_proj", INT4), lw.variant(f"{prefix}.w2", INT4))
    # GPTQ: the fused expert's Hessian is gathered from the rows routed to it, as a Linear's
    Hf, Hl = fw.hessian(f"{prefix}.gate_up_proj"), lw.hessian(f"{prefix}.w1")
    assert torch.allclose(Hf, Hl, rtol=1e-5, atol=1e-6) and Hf.abs().sum() > 0
    assert torch.allclose(fw.hessian(f"{prefix}.down_proj"), lw.hessian(f"{prefix}.w2"),
                          rtol=1e-5, atol=1e-6)
    g = fw.variant(f"{prefix}.gate_up_proj", GPTQ)
    by_rows = [quantize_weight(part, GPTQ, inputs=LayerInputs(hessian=Hf)) for part in W.split(FF)]
    assert torch.equal(g, torch.cat(by_rows)) and not torch.equal(g, q)
    # applied in the forward pass: both layouts give the same logits under the same plan
    plan = {name: (GPTQ if ".experts.1." in name else INT4 if ".experts." in name else FP16)
            for name in fw.modules}
    lplan = {name: (GPTQ if ".experts.1." in name else INT4 if ".experts." in name else FP16)
             for name in lw.modules}
    b = batches()[0]
    with torch.inference_mode():
        before = fused(**b).logits
        fw.apply_(fs.encode(plan))
        lw.apply_(ls.encode(lplan))
        after = fused(**b).logits
        assert torch.allclose(after, linear(**b).logits, atol=1e-4)
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.equal(fused.model.layers[0].mlp.experts.gate_up_proj.data[1], g)
        fw.restore_()  # the original comes back from its own copy
        assert torch.equal(fused.model.layers[0].mlp.experts.gate_up_proj.data[1], W)
        assert torch.equal(fused(**b).logits, before)
    out = fw.evaluate(fs.uniform(INT4))
    assert out.error is None and out.objective > 0


class FixedRouter(nn.Module):
    """Routes flat token t to experts t % E and (t + 1) % E with equal weights."""

    def forward(self, hidden):
        t = torch.arange(hidden.reshape(-1, H).shape[0])
        index = torch.stack([t % E, (t + 1) % E], dim=1)
        return None, torch.full(index.shape, 0.5), index


def test_routing_is_counted_on_a_hand_made_routing(mixtral):
    assert count_routes(torch.tensor([[0, 1], [1, 3], [3, 4]]), 4).tolist() == [1, 2, 0, 2]
    assert count_routes(torch.tensor([[0, 1], [1, 3]]), 4,
                        torch.tensor([False, True])).tolist() == [0, 1, 0, 1]
    fused, linear = models(mixtral)
    for model in (fused, linear):
        for layer in model.model.layers:
            layer.mlp.gate = FixedRouter()
    mask = batches(pad=True)[0]["attention_mask"].reshape(-1)
    real = [t for t in range(mask.numel()) if mask[t]]
    want = [sum(e in (t % E, (t + 1) % E) for t in real) for e in range(E)]
    every = [sum(e in (t % E, (t + 1) % E) for t in range(mask.numel())) for e in range(E)]
    assert want != every  # the padded sample routes somewhere too
    got = worker(fused, space_of(fused), pad=True).routing()
    for layer in range(L):
        for e in range(E):
            for matrix in ("gate_up_proj", "down_proj"):
                name = f"model.layers.{layer}.mlp.experts.{e}.{matrix}"
                assert got[name] == pytest.approx(want[e] / len(real))
    assert sum(got[f"model.layers.0.mlp.experts.{e}.down_proj"] for e in range(E)) == \
        pytest.approx(K)
    # separate Linears in a container called with the routing: counted there, padding excluded
    split = worker(linear, space_of(linear), pad=True).routing()
    assert [split[f"model.layers.1.mlp.experts.{e}.w2"] * len(real) for e in range(E)] == \
        pytest.approx(want)
    # a container its block does not call (each expert called alone): the rows each receives
    for layer in linear.model.layers:
        layer.mlp.experts.forward = None  # not called as a whole any more
        layer.mlp.forward = loop_block(layer.mlp)
    rows = worker(linear, space_of(linear), pad=True).routing()
    assert [rows[f"model.layers.0.mlp.experts.{e}.w1"] * len(real) for e in range(E)] == \
        pytest.approx(every)


def loop_block(mlp):
    """A MoE block that calls its experts one by one (transformers 4.x Mixtral)."""
    def forward(hidden):
        shape = hidden.shape
        flat = hidden.reshape(-1, H)
        _, weights, index = mlp.gate(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(mlp.experts):
            token, slot = torch.where(index == e)
            if len(token):
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.reshape(shape)
    return forward


def test_the_fisher_proxy_of_a_fused_expert_is_the_linears(mixtral):
    from mpsearch.workers.fisher import fisher_diagonals

    fused, linear = models(mixtral)
    ff = fisher_diagonals(worker(fused, space_of(fused)))
    fl = fisher_diagonals(worker(linear, space_of(linear)))
    prefix = "model.layers.1.mlp.experts.2"
    gate_up = torch.cat([fl[f"{prefix}.w1"], fl[f"{prefix}.w3"]])
    assert ff[f"{prefix}.gate_up_proj"].shape == (2 * FF, H) and gate_up.abs().sum() > 0
    assert torch.allclose(ff[f"{prefix}.gate_up_proj"], gate_up, rtol=1e-3, atol=1e-12)
    assert torch.allclose(ff[f"{prefix}.down_proj"], fl[f"{prefix}.w2"], rtol=1e-3, atol=1e-12)


def test_a_checkpoint_holds_the_quantized_fused_experts_and_compressed_tensors_refuses_unloadable(
        tiny_mixtral_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from mpsearch.workers.checkpoint import check_plan_shapes, weights_only_setup, write_checkpoint
    from mpsearch.workers.export_ct import ExportError, _shapes_model, compressed_tensors_schemes

    name = "model.layers.1.mlp.experts.2.gate_up_proj"
    plan = {name: INT4, "model.layers.1.mlp.experts.2.down_proj": INT4,
            "model.layers.0.self_attn.q_proj": INT4}
    check_plan_shapes(tiny_mixtral_path, "causal-lm", {name: (2 * FF, H)})
    out = write_checkpoint(tiny_mixtral_path, plan, tmp_path / "ckpt", kind="causal-lm")
    before = AutoModelForCausalLM.from_pretrained(tiny_mixtral_path).model.layers[1].mlp.experts
    after = AutoModelForCausalLM.from_pretrained(out).model.layers[1].mlp.experts
    assert torch.equal(after.gate_up_proj[2], quantize_weight(before.gate_up_proj[2], INT4))
    assert torch.equal(after.down_proj[2], quantize_weight(before.down_proj[2], INT4))
    assert torch.equal(after.gate_up_proj[1], before.gate_up_proj[1])  # left alone by the plan
    setup = weights_only_setup(tiny_mixtral_path, "causal-lm")
    with pytest.raises(ExportError, match=f"layer {name}: option int4-g32-asym cannot be exported "
                                          "to compressed-tensors as a fused expert: transformers' "
                                          "loader unpacks fused experts without zero points"):
        compressed_tensors_schemes(_shapes_model(setup), plan)
    sym = {n: parse_option("int4-g32-sym") for n in plan}  # one scheme for every expert slice
    with pytest.raises(ExportError, match="layer model.layers.0.mlp.experts.0.gate_up_proj: option "
                                          "nothing \\(left dense\\) cannot be exported to "
                                          f"compressed-tensors beside {name}'s int4-g32-sym: a "
                                          "checkpoint holds one scheme for all its fused experts"):
        compressed_tensors_schemes(_shapes_model(setup), sym)
    for label in ("nvfp4", "w8a8-fp8"):
        with pytest.raises(ExportError, match=f"layer {name}: option {label} cannot be exported "
                                              "to compressed-tensors as a fused expert"):
            compressed_tensors_schemes(_shapes_model(setup), {name: parse_option(label)})


def test_a_qwen_moe_counts_its_shared_expert_as_always_active_and_vllm_ties_it():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    from mpsearch.spaces.runtime import restrict

    n, k, moe_ff, shared_ff = 8, 2, 32, 96
    config = Qwen2MoeConfig(vocab_size=V, hidden_size=H, intermediate_size=64,
                            moe_intermediate_size=moe_ff, shared_expert_intermediate_size=shared_ff,
                            num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
                            num_experts=n, num_experts_per_tok=k, max_position_embeddings=64)
    with torch.device("meta"):
        model = Qwen2MoeForCausalLM(config)
    layers = {ly.name: ly for ly in discover_layers(model)}
    assert layers["model.layers.0.mlp.shared_expert.up_proj"].active == 1.0
    assert layers["model.layers.0.mlp.experts.7.down_proj"].active == k / n
    total = sum(p.numel() for p in model.parameters())
    routed = L * n * (2 * moe_ff * H + H * moe_ff)
    rules = [LayerRule(r"layers\.\d+\.mlp\.(experts|shared_expert)\.", (INT4, FP16))]
    space = build_space(list(layers.values()), rules, (), total, expert_group=1)
    assert space.total_params == total and space.active_params == total - routed * (1 - k / n)
    assert len(space.genes) == L * (n + 3)  # per block: 8 experts, shared gate, up, down
    vllm = restrict(rules, [], "vllm", list(layers))
    tied = build_space(list(layers.values()), vllm.rules, vllm.ties, total, expert_group=1)
    # per block: every routed expert one gene, the shared expert's gate/up one, its down one
    assert sorted(len(g.layers) for g in tied.genes) == [1, 1, 2, 2, 2 * n, 2 * n]


def test_the_level_builds_batched_gptq_makes_fused_experts_as_one_layer_at_a_time(mixtral):
    from mpsearch.workers.level_build import BuildTask, build_task_

    fused, _ = models(mixtral)
    space = space_of(fused, rules=[LayerRule(r"experts", (GPTQ, FP16))])
    w = worker(fused, space)
    names = tuple(ly.name for ly in space.layers)
    assert build_task_(w, BuildTask(names, (GPTQ,))) == len(names) == L * E * 2
    for name in names:
        one = quantize_weight(w.original[name], GPTQ, inputs=LayerInputs(hessian=w.hessian(name)))
        assert torch.equal(w.cache.get((name, GPTQ)), one), name
