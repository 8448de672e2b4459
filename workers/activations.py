"""Quantizing what flows through the model: a layer's inputs (W8A8) and the KV cache.

A W8A8 option (``w8a8-int8``, ``w8a8-fp8``; ``QuantOption.activations``) quantizes its layer's
input per token, dynamically, as vLLM's kernels do: each row of the input (one token) gets its own
scale from its absmax at run time, the GEMM runs on the codes, its output is rescaled. A trial
is scored on exactly that arithmetic, in float32: the input is replaced by its quantize-dequantize
before the (quantized) weight multiplies it, through a forward pre-hook on the layer.

* int8 (``scaled_int8_quant``, symmetric, dynamic): s = absmax/127 per token, q = clamp(round(x/s),
  −128, 127), x̂ = s·q;
* FP8 E4M3 (``dynamic_per_token_scaled_fp8_quant``): s = max(absmax/448, 1/(448·512)) per token,
  x̂ = s·e4m3(clamp(x/s, ±448)).

A quantized KV cache (``space.kv_cache``) is scored by quantizing the outputs of the attention's
key and value projections (what the cache stores, before RoPE rotates the keys), with one scale
per tensor from its absmax, as a static per-tensor scale calibrated on that input would be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mpsearch.spaces.options import QuantOption

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512)  # vLLM's floor on a dynamic FP8 scale
INT8_MAX = 127.0
_TINY = torch.finfo(torch.float32).tiny  # an all-zero token gets zeros, not NaN


def quantize_per_token(x: torch.Tensor, scheme: str) -> torch.Tensor:
    """``x`` (…, features) quantized and dequantized per token (last dimension) with ``scheme``
    (``int8`` or ``fp8_e4m3``); same shape and dtype."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    return _fake_quant(xf, amax, scheme).to(x.dtype)


def quantize_per_tensor(x: torch.Tensor, scheme: str) -> torch.Tensor:
    """``x`` quantized and dequantized with one scale for the whole tensor (a KV cache's)."""
    xf = x.float()
    return _fake_quant(xf, xf.abs().amax(), scheme).to(x.dtype)


def _fake_quant(xf: torch.Tensor, amax: torch.Tensor, scheme: str) -> torch.Tensor:
    if scheme == "int8":
        scale = (amax / INT8_MAX).clamp_min(_TINY)
        return torch.clamp(torch.round(xf / scale), -128, 127) * scale
    if scheme == "fp8_e4m3":
        scale = (amax / FP8_MAX).clamp_min(FP8_MIN_SCALE)
        codes = torch.clamp(xf / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return codes.float() * scale
    raise ValueError(f"unknown activation scheme {scheme!r}; valid: int8, fp8_e4m3")


def input_activation_args(option: QuantOption) -> dict[str, Any] | None:
    """compressed-tensors ``QuantizationArgs`` keywords of ``option``'s input activations (the
    per-token dynamic schemes vLLM serves: W8A8 int8, FP8_DYNAMIC), None for a weight-only one."""
    if not option.activations:
        return None
    kind = "int" if option.activations == "int8" else "float"
    return {"num_bits": 8, "type": kind, "symmetric": True, "strategy": "token", "dynamic": True}


KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                   "symmetric": True}  # compressed-tensors' kv_cache_scheme of an FP8 cache


def kv_cache_amax_(model: nn.Module, attention: Mapping[str, tuple[nn.Module, nn.Module]],
                   batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, tuple[float, float]]:
    """Per attention layer, the largest |key| and |value| the cache holds over ``batches`` (the
    k_proj and v_proj outputs of ``model`` as it stands): a static FP8 scale is amax / 448."""
    seen = {name: [0.0, 0.0] for name in attention}
    handles = []
    for name, modules in attention.items():
        for i, module in enumerate(modules):
            def record(_m: nn.Module, _a: tuple, out: torch.Tensor, name=name, i=i) -> None:
                seen[name][i] = max(seen[name][i], float(out.detach().abs().max()))
            handles.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {name: (k, v) for name, (k, v) in seen.items()}


def quantize_inputs_(module: nn.Module, scheme: str) -> RemovableHandle:
    """Quantize ``module``'s input per token with ``scheme`` on every call (until removed)."""
    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (quantize_per_token(args[0], scheme), *args[1:])

    return module.register_forward_pre_hook(hook)


def quantize_outputs_(module: nn.Module, scheme: str) -> RemovableHandle:
    """Quantize ``module``'s output per tensor with ``scheme`` (a KV projection's: the cache)."""
    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return quantize_per_tensor(output, scheme)

    return module.register_forward_hook(hook)
