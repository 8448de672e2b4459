"""The GEMM each option runs as on this device, built from its stored form, for timing.

:func:`make_kernel` turns a :class:`~mpsearch.spaces.latency.GemmPoint` (a layer shape and a
kernel key from :func:`~mpsearch.spaces.latency.kernel_key`) into a callable ``x (rows × in) →
y (rows × out)`` over weights held in the kernel's own layout, and says what it runs:

- ``fp16``: ``torch.nn.functional.linear`` at the model's dtype (bf16 on a GPU);
- ``int4-g{32,64,128,256}-{sym,asym}``: torch's tinygemm int4 weight-only kernel
  (``torch._weight_int4pack_mm``, the kernel torchao's int4 weight-only layout calls;
  ``torch._weight_int4pack_mm_for_cpu`` on a CPU), bf16 activations, a scale and zero per group;
- ``int8-ch-sym``: ``torch._weight_int8pack_mm`` (int8 weights, one scale per output channel);
- ``w8a8-int8``: per-token dynamic int8 quantization of the activations (absmax / 127, torch
  ops), ``torch._int_mm`` (int32 accumulation; rows padded to 32 on a GPU, which needs more than
  16), then the per-token × per-channel rescale;
- ``w8a8-fp8``: per-token dynamic FP8 E4M3 quantization (absmax / 448) and
  ``torch._scaled_mm`` with row-wise scales, output in the model's dtype;
- anything else, and any of the above whose kernel the device refuses: *dequantize + matmul*,
  what an engine without a kernel for the format runs: the stored codes (packed two per byte at
  ≤ 4 bits, else one per byte; FP8 codes as FP8) are expanded to the model's dtype with their
  group scales (and zero points, or the format's 16-value code book) and multiplied.

Weights are random codes of the kernel's layout: no kernel's time depends on the values (no
sparsity is exploited, none skips zeros), so timing needs no quantized model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpsearch.spaces.latency import GemmPoint
from mpsearch.spaces.options import LAYOUTS

Kernel = Callable[[torch.Tensor], torch.Tensor]
_INT = re.compile(r"^int(?P<bits>\d)-(?P<group>ch|g\d+)-(?P<sym>sym|asym)$")
TINYGEMM_GROUPS = (32, 64, 128, 256)
INT_MM_MIN_ROWS = 32  # torch._int_mm on CUDA needs more than 16 rows; 32 keeps the tiles aligned
# Formats whose codes index a 16-value code book rather than an integer grid.
CODE_BOOK_FORMATS = ("nf4", "nvfp4", "mxfp4")


@dataclass
class PreparedKernel:
    """A callable GEMM over one copy of a layer's weights in the kernel's layout."""

    run: Kernel
    runs_as: str
    fast: bool
    weight_bytes: int  # bytes the kernel reads per call (codes, scales, zeros)


def make_kernel(point: GemmPoint, device: torch.device, dtype: torch.dtype,
                generator: torch.Generator | None = None) -> PreparedKernel:
    """The kernel of ``point`` on ``device`` for activations of ``dtype`` (see module doc).

    A fast kernel is tried once on a small input; if the device refuses it (an op missing on this
    build, a dtype it does not take) the point falls back to dequantize + matmul and its
    ``runs_as`` says why.
    """
    out_f, in_f, key = point.out_features, point.in_features, point.kernel
    reason = ""
    try:  # packing the weights or the first call may be refused by this device or build
        fast = _fast_kernel(key, out_f, in_f, device, dtype, generator)
        if fast is not None:
            y = fast.run(torch.zeros(2, in_f, device=device, dtype=dtype))
            if tuple(y.shape) != (2, out_f):
                raise RuntimeError(f"output shape {tuple(y.shape)}")
            return fast
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        reason = f" (the fast kernel was refused: {str(exc).splitlines()[0][:100]})"
    slow = _dequantize_matmul(key, out_f, in_f, device, dtype, generator)
    slow.runs_as += reason
    return slow


def _fast_kernel(key: str, out_f: int, in_f: int, device: torch.device, dtype: torch.dtype,
                 gen: torch.Generator | None) -> PreparedKernel | None:
    if key == "fp16":
        w = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=gen)
        return PreparedKernel(lambda x: F.linear(x, w), f"torch.nn.functional.linear ({_name(dtype)})",
                              True, w.numel() * w.element_size())
    if key == "w8a8-int8":
        return _w8a8_int8(out_f, in_f, device, dtype, gen)
    if key == "w8a8-fp8":
        return _w8a8_fp8(out_f, in_f, device, dtype, gen)
    match = _INT.match(key)
    if match is None:
        return None
    bits, group, sym = int(match["bits"]), match["group"], match["sym"] == "sym"
    if bits == 4 and group != "ch" and int(group[1:]) in TINYGEMM_GROUPS:
        return _int4_tinygemm(out_f, in_f, int(group[1:]), device, dtype, gen)
    if bits == 8 and group == "ch" and sym:
        wq = torch.randint(-127, 128, (out_f, in_f), device=device, dtype=torch.int8, generator=gen)
        scales = torch.rand(out_f, device=device, dtype=dtype, generator=gen)
        return PreparedKernel(lambda x: torch._weight_int8pack_mm(x, wq, scales),
                              "torch._weight_int8pack_mm", True, wq.numel() + 2 * out_f)
    return None


def _int4_tinygemm(out_f: int, in_f: int, group: int, device: torch.device, dtype: torch.dtype,
                   gen: torch.Generator | None) -> PreparedKernel:
    codes = torch.randint(0, 16, (out_f, in_f), device=device, dtype=torch.int32, generator=gen)
    scales_zeros = torch.rand(in_f // group, out_f, 2, device=device, dtype=dtype, generator=gen)
    nbytes = out_f * in_f // 2 + scales_zeros.numel() * scales_zeros.element_size()
    if device.type == "cuda":
        packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        weight = torch._convert_weight_to_int4pack(packed, 8)  # inner_k_tiles=8, torchao's default
        op, name = torch._weight_int4pack_mm, "torch._weight_int4pack_mm"
    else:
        weight = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        op, name = torch._weight_int4pack_mm_for_cpu, "torch._weight_int4pack_mm_for_cpu"
    return PreparedKernel(lambda x: op(x, weight, group, scales_zeros), name, True, nbytes)


def _w8a8_int8(out_f: int, in_f: int, device: torch.device, dtype: torch.dtype,
               gen: torch.Generator | None) -> PreparedKernel:
    w_t = torch.randint(-127, 128, (out_f, in_f), device=device, dtype=torch.int8,
                        generator=gen).t()  # (in × out), column-major: the layout _int_mm takes
    w_scale = torch.rand(1, out_f, device=device, dtype=torch.float32, generator=gen)
    min_rows = INT_MM_MIN_ROWS if device.type == "cuda" else 1

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        x_scale = x.abs().amax(-1, keepdim=True).float().clamp_(min=1e-8) / 127
        xq = (x.float() / x_scale).round_().clamp_(-128, 127).to(torch.int8)
        if rows < min_rows:
            xq = F.pad(xq, (0, 0, 0, min_rows - rows))
        acc = torch._int_mm(xq, w_t)[:rows]
        return (acc.float() * x_scale * w_scale).to(dtype)

    pad = f", rows padded to {min_rows}" if min_rows > 1 else ""
    return PreparedKernel(run, f"torch._int_mm (per-token int8 activations in torch ops{pad})",
                          True, out_f * in_f + 4 * out_f)


def _w8a8_fp8(out_f: int, in_f: int, device: torch.device, dtype: torch.dtype,
              gen: torch.Generator | None) -> PreparedKernel:
    w_t = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=gen).to(
        torch.float8_e4m3fn).t()  # column-major, as _scaled_mm takes its second operand
    w_scale = torch.rand(1, out_f, device=device, dtype=torch.float32, generator=gen)
    fmax = torch.finfo(torch.float8_e4m3fn).max

    def run(x: torch.Tensor) -> torch.Tensor:
        x_scale = x.abs().amax(-1, keepdim=True).float().clamp_(min=1e-12) / fmax
        xq = (x.float() / x_scale).clamp_(-fmax, fmax).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, w_t, scale_a=x_scale, scale_b=w_scale, out_dtype=dtype)

    return PreparedKernel(run, "torch._scaled_mm (row-wise scales; per-token FP8 E4M3 "
                          "activations in torch ops)", True, out_f * in_f + 4 * out_f)


def _dequantize_matmul(key: str, out_f: int, in_f: int, device: torch.device, dtype: torch.dtype,
                       gen: torch.Generator | None) -> PreparedKernel:
    """What an engine without a kernel for ``key`` runs: expand the codes, then matmul."""
    runs_as = f"dequantize + matmul ({key} has no fast kernel here)"
    key = {"w8a8-int8": "int8-ch-sym", "w8a8-fp8": "fp8_e4m3"}.get(key, key)  # weights alone
    bits, group, zeros, book = _layout_of(key, in_f)
    if key.startswith("fp8"):
        fp8 = torch.float8_e5m2 if key == "fp8_e5m2" else torch.float8_e4m3fn
        w8 = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=gen).to(fp8)
        s = torch.rand(out_f, 1, device=device, dtype=dtype, generator=gen)
        return PreparedKernel(lambda x: F.linear(x, w8.to(dtype) * s), runs_as, False,
                              w8.numel() + 2 * out_f)
    packed = bits <= 4
    codes = torch.randint(0, 256 if packed else 2 ** bits, (out_f, in_f // 2 if packed else in_f),
                          device=device, dtype=torch.uint8, generator=gen)
    groups = in_f // group
    scale = torch.rand(out_f, groups, 1, device=device, dtype=dtype, generator=gen)
    zero = torch.rand(out_f, groups, 1, device=device, dtype=dtype, generator=gen) if zeros else None
    table = torch.randn(16, device=device, dtype=dtype, generator=gen) if book else None

    def run(x: torch.Tensor) -> torch.Tensor:
        c = torch.stack((codes & 15, codes >> 4), -1).view(out_f, in_f) if packed else codes
        w = table[c.int()] if table is not None else c.to(dtype)
        w = w.view(out_f, groups, group)
        w = (w - zero) * scale if zero is not None else w * scale
        return F.linear(x, w.view(out_f, in_f))

    nbytes = codes.numel() + scale.numel() * 2 * (2 if zeros else 1)
    return PreparedKernel(run, runs_as, False, nbytes)


def _layout_of(key: str, in_f: int) -> tuple[int, int, bool, bool]:
    """(bits, group, has zero points, code book) of a kernel key, for dequantize + matmul."""
    match = _INT.match(key)
    if match:
        group = in_f if match["group"] == "ch" else int(match["group"][1:])
        return int(match["bits"]), group, match["sym"] == "asym", False
    layout = LAYOUTS.get(key)
    if layout is None:
        raise ValueError(f"unknown kernel {key!r}")
    asym = key in ("q4_1", "q5_1")  # GGUF's formats with a minimum m beside the scale d
    return layout.bits, layout.block or in_f, asym, key in CODE_BOOK_FORMATS


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
