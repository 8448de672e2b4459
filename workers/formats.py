"""Floating-point and codebook number formats (FP8, NVFP4, MXFP4, NF4) as pure tensor functions.

Each ``*_encode`` returns the stored parts (values on the format's grid and their scales), which
tests check against the format's definition and exports write; each ``quantize_*`` returns the
*dequantized* weight (float32, same shape), computed from exactly those parts: what a kernel
reading the stored format would compute with. Blocks run along the input dimension of an
``out × in`` weight; their sizes come from the one table of formats, :data:`~mpsearch.spaces.options.LAYOUTS`,
which also charges them. Scales are floored so that an all-zero block divides by a positive number
and yields zeros, never NaN. The handlers of :mod:`.registry` dispatch options to these functions.
"""

from __future__ import annotations

import torch

from mpsearch.spaces.options import LAYOUTS

FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal fp16 number, the floor of fp16 scales

# FP4 E2M1 (OCP Microscaling Formats v1.0, §5.3.3): sign, 2 exponent bits, 1 mantissa bit.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal, 6 = 1.5 · 2^2 (MX scale: floor(log2 amax) − emax)
# Halfway points between neighbours; at a tie, round to the even code (0 is even, 0.5 odd, ...):
# 0.75 → 1, 1.75 → 2 and 3.5 → 4 round up, the others down.
_E2M1_MIDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIE_UP = (False, True, False, True, False, True, False)

# NormalFloat-4 code values of QLoRA (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of
# Quantized LLMs", Appendix E), as bitsandbytes defines them (functional.py, ``get_4bit_type("nf4")``).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _block(fmt: str) -> int:
    block = LAYOUTS[fmt].block
    assert block is not None, f"{fmt} has a fixed block"
    return block


NVFP4_BLOCK, MXFP4_BLOCK, NF4_BLOCK = _block("nvfp4"), _block("mxfp4"), _block("nf4")
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127


def as_blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    """View ``w`` (out × in) as (out · in/block) × block rows, as float32."""
    out_features, in_features = w.shape
    if in_features % block:
        raise ValueError(f"block size {block} does not divide in_features={in_features}")
    return w.float().reshape(out_features * in_features // block, block)


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` as stored in fp16, floored at fp16's smallest normal (a floor applied before the
    cast would underflow to 0, and a zero block would divide 0 by 0)."""
    return scale.half().float().clamp(min=FP16_TINY)


# -- FP8 ------------------------------------------------------------------------------------------
def fp8_encode(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 (``fp8_e4m3`` or ``fp8_e5m2``) with one fp16 scale per output channel.

    s = fp16(max|w_row| / fp8_max); v = float8(clamp(w/s, ±fp8_max)), the cast being torch's
    (round to nearest even), so ŵ = v · s. The clamp saturates values the fp16 rounding of s pushed
    past the max. Returns (v in the float8 dtype, out × in; s, out × 1).
    """
    dtype = FP8_DTYPES[fmt]
    fmax = torch.finfo(dtype).max
    x = w.float()
    scale = fp16_scale(x.abs().amax(dim=1, keepdim=True) / fmax)
    return (x / scale).clamp(-fmax, fmax).to(dtype), scale


def quantize_fp8(w: torch.Tensor, fmt: str) -> torch.Tensor:
    values, scale = fp8_encode(w, fmt)
    return values.float() * scale


# -- FP4 E2M1 -------------------------------------------------------------------------------------
def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Each value of ``x`` rounded to the nearest E2M1 number (ties to even), saturating at ±6."""
    grid = torch.tensor(E2M1_GRID, device=x.device)
    mids = torch.tensor(_E2M1_MIDS, device=x.device)
    tie_up = torch.tensor(_E2M1_TIE_UP, device=x.device)
    a = x.abs().clamp(max=E2M1_MAX)
    idx = torch.bucketize(a, mids)  # a == mids[i] lands on i, the lower neighbour
    at = idx.clamp(max=len(_E2M1_MIDS) - 1)
    idx = idx + ((a == mids[at]) & tie_up[at]).long()
    return torch.copysign(grid[idx], x)


def nvfp4_encode(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4: E2M1 values, an FP8-E4M3 scale per block of 16, one fp32 scale per tensor.

    The per-tensor scale g = max|w| / (448 · 6) lets block scales use E4M3's whole range; block b
    stores s_b = e4m3(max|w_b| / 6 / g) and values v = e2m1(w / (s_b · g)), so ŵ = v · s_b · g.
    A block whose scale rounds to 0 stores zeros. Returns (v, s_b, g); v is blocks × 16.
    """
    blocks = as_blocks(w, NVFP4_BLOCK)
    g = (blocks.abs().amax() / (E4M3_MAX * E2M1_MAX)).clamp(min=torch.finfo(torch.float32).tiny)
    s = (blocks.abs().amax(dim=1, keepdim=True) / E2M1_MAX / g).clamp(max=E4M3_MAX)
    s = s.to(torch.float8_e4m3fn).float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    values = torch.where(s > 0, round_e2m1(blocks / (safe * g)), torch.zeros_like(blocks))
    return values, s, g


def quantize_nvfp4(w: torch.Tensor) -> torch.Tensor:
    values, s, g = nvfp4_encode(w)
    return (values * s * g).reshape(w.shape)


def mxfp4_encode(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 (OCP MX v1.0, §6.3): E2M1 values, an E8M0 power-of-two scale per block of 32.

    X = 2^(⌊log2 max|w_b|⌋ − 2), clamped to E8M0's 2^−127..2^127; v = e2m1(w / X), saturating
    (values up to 7.99 clip to 6, as the spec's conversion does). Returns (v, X); v is blocks × 32.
    """
    blocks = as_blocks(w, MXFP4_BLOCK)
    _, e = torch.frexp(blocks.abs().amax(dim=1, keepdim=True))  # amax = m · 2^e, m ∈ [0.5, 1)
    exp = (e - 1 - E2M1_EMAX).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)  # e − 1 = ⌊log2 amax⌋
    scale = torch.ldexp(torch.ones_like(exp, dtype=torch.float32), exp)
    return round_e2m1(blocks / scale), scale


def quantize_mxfp4(w: torch.Tensor) -> torch.Tensor:
    values, scale = mxfp4_encode(w)
    return (values * scale).reshape(w.shape)


# -- NF4 ------------------------------------------------------------------------------------------
def nf4_encode(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4: per block of 64, an fp16 absmax a and 4-bit indices of the nearest NF4 code to w/a.

    Returns (indices, a): indices (int64, blocks × 64) into :data:`NF4_CODE`, a (blocks × 1).
    """
    blocks = as_blocks(w, NF4_BLOCK)
    absmax = fp16_scale(blocks.abs().amax(dim=1, keepdim=True))
    code = torch.tensor(NF4_CODE, device=w.device)
    mids = (code[1:] + code[:-1]) / 2
    return torch.bucketize(blocks / absmax, mids), absmax


def quantize_nf4(w: torch.Tensor) -> torch.Tensor:
    indices, absmax = nf4_encode(w)
    return nf4_decode(indices, absmax).reshape(w.shape)


def nf4_decode(indices: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """The NF4 values of ``indices`` (blocks × 64) times their blocks' ``absmax``."""
    code = torch.tensor(NF4_CODE, device=indices.device)
    return code[indices] * absmax


# -- GGUF legacy block formats (ggml-quants.c; gguf-py's gguf/quants.py is the reference) --------
GGUF_BLOCK = _block("q8_0")


def _away(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero (C's roundf, which ggml uses)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def gguf_encode(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``q4_0``/``q4_1``/``q5_0``/``q5_1``/``q8_0`` per block of 32, exactly as ggml quantizes.

    Returns (codes q, blocks × 32, float; d, blocks × 1, the fp16-rounded scale; m, the
    fp16-rounded minimum of the ``_1`` formats, else None), with ŵ = d·q + m (``_1``) or
    d·(q − 2^(b−1)) (``_0``; q8_0 stores signed codes, ŵ = d·q). Codes are computed from the
    float32 scale and the stored scale is its fp16 rounding, as ggml does.
    """
    blocks = as_blocks(w, GGUF_BLOCK)
    if fmt == "q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        return _away(blocks * _inverse(d)), d.half().float(), None
    if fmt in ("q4_0", "q5_0"):
        half = 8 if fmt == "q4_0" else 16
        imax = blocks.abs().argmax(dim=1, keepdim=True)
        d = blocks.gather(1, imax) / -half
        q = torch.trunc(blocks * _inverse(d) + (half + 0.5)).clamp(0, 2 * half - 1)
        return q, d.half().float(), None
    top = 15 if fmt == "q4_1" else 31
    lo, hi = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    d = (hi - lo) / top
    q = torch.trunc((blocks - lo) * _inverse(d) + 0.5).clamp(0, top)
    return q, d.half().float(), lo.half().float()


def gguf_decode(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, fmt: str) -> torch.Tensor:
    """The weights (blocks × 32) that ``gguf_encode``'s parts stand for, as ggml dequantizes."""
    if m is not None:
        return d * q + m
    offset = {"q4_0": 8, "q5_0": 16, "q8_0": 0}[fmt]
    return d * (q - offset)
