"""Finding the quantizable layers of a model, and reading/writing their weights uniformly.

``nn.Linear`` stores its weight as (out × in); GPT-2's ``Conv1D`` stores (in × out). Everything
else in mpsearch sees (out × in), so the transpose is confined to this module.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mpsearch.spaces.space import AttentionInfo, LayerInfo

try:  # transformers keeps GPT-2's Conv1D here
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - depends on the transformers version
    Conv1D = ()  # type: ignore[assignment,misc]


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module name → module, for every Linear or Conv1D, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}


def discover_layers(model: nn.Module) -> list[LayerInfo]:
    """Shapes of every quantizable layer (works on a model built on the meta device)."""
    infos = []
    for name, module in quantizable_modules(model).items():
        out_f, in_f = oriented_shape(module)
        infos.append(LayerInfo(name, in_f, out_f))
    return infos


def oriented_shape(module: nn.Module) -> tuple[int, int]:
    rows, cols = cast(torch.Tensor, module.weight).shape
    return (cols, rows) if isinstance(module, Conv1D) else (rows, cols)


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out × in)."""
    w = cast(torch.Tensor, module.weight).data
    return w.t() if isinstance(module, Conv1D) else w


def set_weight_(module: nn.Module, w: torch.Tensor) -> None:
    """Point the module at ``w`` (out × in) without copying: swapping a cached variant is O(1)."""
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
