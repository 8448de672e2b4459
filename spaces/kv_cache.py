"""The KV cache's facts and costs: an attention layer's cached elements per token (from the
model's config) and the bits a cache of some precision holds.

A causal LM's attention layer caches, per token, a key and a value of ``kv_heads × head_dim``
elements each. A memory budget charges that cache at its load (``spaces/budget.py``); a searched
precision (``space.kv_cache``) is a KV gene of the space (``spaces/space.py``). Pure values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import QuantOption


@dataclass(frozen=True)
class AttentionInfo:
    """One attention layer's KV cache, from the model's config: per token it stores a key and a
    value of ``kv_heads × head_dim`` elements each (grouped-query attention: fewer KV heads)."""

    name: str  # the attention module (``model.layers.0.self_attn``)
    kv_heads: int
    head_dim: int

    @property
    def elements_per_token(self) -> int:
        return 2 * self.kv_heads * self.head_dim


# KV-cache element widths: 16 bits unless a searched choice says otherwise; a quantized cache
# stores one fp32 scale for the keys and one for the values per layer (vLLM's k_scale, v_scale).
KV_DEFAULT_BITS = 16
KV_FORMATS = ("fp16", "fp8_e4m3")  # the precisions space.kv_cache searches (vLLM's auto and fp8)
KV_SCALE_BITS = 2 * 32


def kv_bits(attention: AttentionInfo, option: QuantOption | None, tokens: int) -> float:
    """Bits of ``attention``'s KV cache holding ``tokens`` tokens with elements of ``option``
    (None: the unquantized 16-bit cache)."""
    if option is None or option.format == "fp16":
        return attention.elements_per_token * KV_DEFAULT_BITS * tokens
    return attention.elements_per_token * option.bits * tokens + KV_SCALE_BITS
