"""Round-to-nearest (RTN) quantization as pure tensor functions.

Each function returns the *dequantized* weight (same shape and dtype as the input): the worker
scores a candidate by running the model with these weights, which is exactly what the packed
integer kernel would compute. Scales and zero points are rounded to fp16, the precision the cost
model charges for them, so the error measured is the error the stored format would have.
"""

from __future__ import annotations

import torch

from mpsearch.spaces.options import QuantOption


def _groups(w: torch.Tensor, group: int) -> torch.Tensor:
    """View ``w`` (out × in) as (out · in/group) × group rows."""
    out_features, in_features = w.shape
    if in_features % group:
        raise ValueError(f"group size {group} does not divide in_features={in_features}")
    return w.reshape(out_features * in_features // group, group)


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` as stored in fp16, floored at fp16's smallest normal so an all-zero group
    divides by a positive number (a floor applied before the cast would underflow to 0)."""
    return scale.half().float().clamp(min=torch.finfo(torch.float16).tiny)


def quantize_rtn_asym(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Asymmetric RTN: per group, q = clamp(round(w/s) + z, 0, 2^b − 1) and ŵ = (q − z)·s."""
    g = _groups(w.float(), group)
    qmax = 2**bits - 1
    lo = g.amin(dim=1, keepdim=True).clamp(max=0)
    hi = g.amax(dim=1, keepdim=True).clamp(min=0)
    scale = _fp16_scale((hi - lo) / qmax)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    q = torch.clamp(torch.round(g / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(w.shape).to(w.dtype)


def quantize_rtn_sym(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric RTN: per group, s = max|w| / (2^(b−1) − 1), q = clamp(round(w/s), −2^(b−1), …)."""
    g = _groups(w.float(), group)
    qmax = 2 ** (bits - 1) - 1
    scale = _fp16_scale(g.abs().amax(dim=1, keepdim=True) / qmax)
    q = torch.clamp(torch.round(g / scale), -qmax - 1, qmax)
    return (q * scale).reshape(w.shape).to(w.dtype)


def quantize_weight(w: torch.Tensor, option: QuantOption) -> torch.Tensor:
    """The weight ``w`` (out × in) as stored under ``option``, dequantized."""
    if option.format == "fp16":
        return w.to(torch.float16).to(w.dtype)
    if option.format == "int":
        group = option.group_for(w.shape[1])
        fn = quantize_rtn_sym if option.symmetric else quantize_rtn_asym
        return fn(w, option.bits, group)
    raise ValueError(f"no quantizer for format {option.format!r}")
