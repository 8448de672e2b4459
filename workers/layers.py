"""Finding the quantizable layers of a model, and reading/writing their weights uniformly.

``nn.Linear`` stores its weight as (out × in); GPT-2's ``Conv1D`` stores (in × out). Everything
else in mpsearch sees (out × in), so the transposes are confined to this module.

An ``nn.Embedding`` whose weight is its own is a layer too (vocabulary × width, grouped along the
width, as GGUF blocks ``token_embd``). Its inputs are one-hot, so its GPTQ Hessian is diagonal
per row and GPTQ's error feedback vanishes: GPTQ of an embedding is round-to-nearest on the same
grid (:meth:`~.worker.Worker.hessian` gives it the identity). Its output error per calibration
token is the error of the row the token looks up, so the Hessian-weighted proxy weights each row
by how often the calibration tokens use it (:meth:`~.worker.Worker.output_error`).

Mixture-of-experts models hold routed experts in one of two layouts, both found here and named
as :mod:`mpsearch.spaces.experts` says: a separate ``nn.Linear`` per expert matrix (an
``nn.ModuleList`` named ``experts``: found as Linears), or fused 3-D parameters of an experts
module (the newer transformers classes: ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``,
applied as ``F.linear(x, gate_up_proj[e])``; ``[E, in, out]`` where the module says
``is_transposed``). Each expert's slice of a fused parameter is an :class:`ExpertSlice`: its
weight reads and writes slice ``e`` of the parameter, so it is quantized exactly as the same
matrix as a Linear is, and applying a variant copies into the slice (a Linear's weight is
repointed instead, O(1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.experts import expert_of
from mpsearch.spaces.kv_cache import AttentionInfo
from mpsearch.spaces.space import LayerInfo

try:  # transformers keeps GPT-2's Conv1D here
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - depends on the transformers version
    Conv1D = ()  # type: ignore[assignment,misc]

# Where a config says how many experts a token is routed to (Mixtral, Qwen-MoE, DeepSeek, OLMoE…).
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k")


@dataclass(frozen=True, eq=False)
class ExpertSlice:
    """Expert ``index`` of the fused 3-D parameter ``param`` of the experts module ``module``."""

    module: nn.Module
    param: str
    index: int
    transposed: bool  # stored [E, in, out] (the module's ``is_transposed``)

    @property
    def tensor(self) -> torch.Tensor:
        return cast(torch.Tensor, getattr(self.module, self.param))


Target = nn.Module | ExpertSlice


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module name → module, for every Linear or Conv1D and every embedding whose weight is its
    own, in model order. A tied embedding (GPT-2's ``wte``, the ``lm_head``'s weight) is not a
    layer of its own: the Linear that shares it is."""
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}
    shared = {id(m.weight) for m in linear.values()}
    return {name: m for name, m in model.named_modules()
            if name in linear or (isinstance(m, nn.Embedding) and id(m.weight) not in shared)}


def is_embedding(target: Target) -> bool:
    """Whether ``target`` is a lookup (``nn.Embedding``): its inputs are token ids, its weight
    vocabulary × width."""
    return isinstance(target, nn.Embedding)


def fused_experts(model: nn.Module) -> dict[str, ExpertSlice]:
    """``<experts module>.<e>.<param>`` → its slice, for every 3-D parameter of a module named
    ``experts`` (a fused experts module), in model order."""
    out = {}
    for name, module in model.named_modules():
        if not name.endswith("experts") or isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue
        transposed = bool(getattr(module, "is_transposed", False))
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                for e in range(p.shape[0]):
                    out[f"{name}.{e}.{pname}"] = ExpertSlice(module, pname, e, transposed)
    return out


def quantizable_targets(model: nn.Module) -> dict[str, Target]:
    """Every quantizable layer: Linears and Conv1Ds, then the slices of fused expert parameters."""
    return {**quantizable_modules(model), **fused_experts(model)}


def experts_per_token(model: nn.Module) -> int:
    """How many routed experts each token uses, from the model's config."""
    config = getattr(model, "config", None)
    for source in (config, getattr(config, "text_config", None)):
        for key in TOP_K_KEYS:
            value = getattr(source, key, None)
            if isinstance(value, int) and value > 0:
                return value
    raise SpecError(f"model: it has routed experts, but its config names none of "
                    f"{', '.join(TOP_K_KEYS)} (how many experts a token uses)")


def discover_layers(model: nn.Module) -> list[LayerInfo]:
    """Shapes of every quantizable layer (works on a model built on the meta device); a routed
    expert's ``active`` is top_k / E of its MoE layer."""
    targets = quantizable_targets(model)
    experts: dict[str, set[int]] = {}
    for name in targets:
        if (found := expert_of(name)) is not None:
            experts.setdefault(found[0], set()).add(found[1])
    top_k = experts_per_token(model) if experts else 0
    infos = []
    for name, target in targets.items():
        out_f, in_f = oriented_shape(target)
        found = expert_of(name)
        active = 1.0 if found is None else min(top_k / len(experts[found[0]]), 1.0)
        infos.append(LayerInfo(name, in_f, out_f, active,
                               "embedding" if is_embedding(target) else "linear"))
    return infos


def oriented_shape(module: Target) -> tuple[int, int]:
    """(out, in) of the layer's weight."""
    if isinstance(module, ExpertSlice):
        rows, cols = module.tensor.shape[1:]
        return (cols, rows) if module.transposed else (rows, cols)
    rows, cols = cast(torch.Tensor, module.weight).shape
    return (cols, rows) if isinstance(module, Conv1D) else (rows, cols)


def get_weight(module: Target) -> torch.Tensor:
    """The weight as (out × in); a view of the module's storage (an expert's: of its slice)."""
    if isinstance(module, ExpertSlice):
        w = module.tensor.data[module.index]
        return w.t() if module.transposed else w
    w = cast(torch.Tensor, module.weight).data
    return w.t() if isinstance(module, Conv1D) else w


def set_weight_(module: Target, w: torch.Tensor) -> None:
    """Point the module at ``w`` (out × in) without copying: swapping a cached variant is O(1).
    An expert slice has no tensor of its own: ``w`` is copied into it."""
    if isinstance(module, ExpertSlice):
        get_weight(module).copy_(w)
        return
    module.weight.data = w.t() if isinstance(module, Conv1D) else w


def discover_attention(model: nn.Module, config) -> tuple[AttentionInfo, ...]:
    """The attention layers that keep a KV cache, with their KV heads and head size from the
    config: modules with ``k_proj`` and ``v_proj`` (Llama, Mistral, Qwen and their kin) or GPT-2's
    fused ``c_attn``. Empty for a model with none, or whose config does not say the sizes."""
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(heads, int) or heads <= 0:
        return ()
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden else None)
    if not isinstance(head_dim, int) or head_dim <= 0:
        return ()
    found = []
    for name, module in model.named_modules():
        k, v = getattr(module, "k_proj", None), getattr(module, "v_proj", None)
        if isinstance(k, nn.Linear) and isinstance(v, nn.Linear):
            if k.out_features != kv_heads * head_dim:  # e.g. an encoder-decoder's cross-attention
                return ()
            found.append(AttentionInfo(name, kv_heads, head_dim))
        elif isinstance(getattr(module, "c_attn", None), Conv1D) and name.endswith(".attn"):
            found.append(AttentionInfo(name, kv_heads, head_dim))
    return tuple(found)
