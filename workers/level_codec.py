"""How a variant is laid out in a level-database file: what the format really holds, packed.

A stored variant is its :class:`~.registry.Encoded` parts, not its dequantized weight: for the
``int`` format the integer codes as their unsigned offsets u = q − q_min packed ``bits`` to a
byte run (two int4 codes per byte, eight int3 codes per three bytes), the fp16 scales, the
uint8 zero points (asymmetric) and the kept-weight mask packed one bit per weight (pruned
options). An int4-g128 variant of an 8B layer takes a quarter of its bf16 weight's bytes plus
1.6 % for the grid. Other formats (a Wanda-pruned FP8 or NVFP4 option) keep their parts in
their own dtypes. :func:`decode` rebuilds the :class:`Encoded` on any device, and
``Encoded.dequantize(dtype)`` gives the weight, bit for bit the one the worker scored (the worker
caches exactly that decode, :func:`dequantize`).

Tensors (safetensors names): ``codes`` (uint8, packed), ``scale``, ``zero``, ``values`` (other
formats), ``global_scale``, ``mask`` (uint8, packed bits), or ``weight`` alone for a variant kept
dense. The header metadata says how to read them (``kind``, ``bits``, ``shape``, ``q_min``,
``dtype``); :data:`FORMAT_VERSION` is bumped whenever this layout changes, and a file of another
version is never read (it is rebuilt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mpsearch.spaces.options import QuantOption

from .registry import Encoded

FORMAT_VERSION = 2  # 1: the dequantized weight in the model's dtype; 2: packed codes and grids

Parts = dict[str, torch.Tensor]


def pack_bits(u: torch.Tensor, bits: int) -> torch.Tensor:
    """The values of ``u`` (uint8, each < 2^bits) packed LSB first into ``bits`` bytes per 8
    values (the last run padded with zeros), as a flat uint8 tensor on ``u``'s device."""
    flat = u.reshape(-1)
    if bits == 8:
        return flat.clone()
    pad = (-flat.numel()) % 8
    v = F.pad(flat, (0, pad)).view(-1, 8).to(torch.int64)
    word = (v << (torch.arange(8, device=u.device) * bits)).sum(dim=1)  # disjoint bit fields
    return ((word.unsqueeze(1) >> (torch.arange(bits, device=u.device) * 8)) & 255) \
        .to(torch.uint8).reshape(-1)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` values :func:`pack_bits` packed (uint8, flat)."""
    if bits == 8:
        return packed[:n]
    word = (packed.view(-1, bits).to(torch.int64)
            << (torch.arange(bits, device=packed.device) * 8)).sum(dim=1)
    v = (word.unsqueeze(1) >> (torch.arange(8, device=packed.device) * bits)) & (2**bits - 1)
    return v.to(torch.uint8).reshape(-1)[:n]


def q_min(option: QuantOption) -> int:
    """The smallest integer code of an ``int`` option: −2^(b−1) symmetric, 0 asymmetric."""
    return -(2 ** (option.bits - 1)) if option.symmetric else 0


def dequantize(enc: Encoded, dtype: torch.dtype) -> torch.Tensor:
    """The weight a worker caches and scores for ``enc``: ``enc.dequantize(dtype)``, contiguous."""
    return enc.dequantize(dtype).contiguous()


def encode(enc: Encoded | torch.Tensor, dtype: torch.dtype) -> tuple[Parts, dict[str, str]]:
    """The tensors and header metadata of a file holding ``enc`` (a weight kept dense: the
    tensor itself) for a model in ``dtype``, on ``enc``'s device."""
    if isinstance(enc, torch.Tensor):
        return {"weight": enc.detach().contiguous()}, {"kind": "dense"}
    rows, cols = enc.values.shape
    meta = {"shape": f"{rows},{cols}", "dtype": str(dtype).removeprefix("torch.")}
    parts: Parts = {}
    option = enc.option
    if option.format == "int":
        low = q_min(option)
        parts["codes"] = pack_bits((enc.values - low).to(torch.uint8), option.bits)
        assert enc.scale is not None
        parts["scale"] = enc.scale.to(torch.float16)  # fp16 values: exact
        if enc.zero_point is not None:
            parts["zero"] = enc.zero_point.to(torch.uint8)  # integer codes in [0, 2^b − 1]
        meta.update(kind="int", bits=str(option.bits), q_min=str(low))
    else:
        parts["values"] = enc.values
        for key, t in (("scale", enc.scale), ("zero", enc.zero_point),
                       ("global_scale", enc.global_scale)):
            if t is not None:
                parts[key] = t
        meta["kind"] = "raw"
    if enc.mask is not None:
        parts["mask"] = pack_bits(enc.mask.to(torch.uint8), 1)
    return {k: v.detach().contiguous() for k, v in parts.items()}, meta


def decode(parts: Mapping[str, torch.Tensor], meta: Mapping[str, str], option: QuantOption,
           device: torch.device | str = "cpu") -> Encoded | torch.Tensor:
    """The :class:`Encoded` (or, for a dense file, the weight) that :func:`encode` wrote,
    with its tensors on ``device`` (unpacked there)."""
    on = {k: v.to(device) for k, v in parts.items()}
    if meta.get("kind") == "dense":
        return on["weight"]
    rows, cols = (int(x) for x in meta["shape"].split(","))
    mask = None if "mask" not in on else \
        unpack_bits(on["mask"], 1, rows * cols).view(rows, cols).bool()
    if meta["kind"] == "int":
        bits, low = int(meta["bits"]), int(meta["q_min"])
        values = unpack_bits(on["codes"], bits, rows * cols).view(rows, cols).float().add_(low)
        zero = on["zero"].float() if "zero" in on else None
        return Encoded(option, values, on["scale"].float(), zero, mask=mask)
    return Encoded(option, on["values"], on.get("scale"), on.get("zero"), on.get("global_scale"),
                   mask)


def digest(parts: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in name order (CPU tensors)."""
    h = hashlib.sha256()
    for key in sorted(parts):
        t = parts[key].contiguous()
        h.update(key.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def target_dtype(meta: Mapping[str, str], default: torch.dtype) -> torch.dtype:
    """The dtype the variant was scored in (``default`` for a dense file: its tensor's)."""
    name = meta.get("dtype")
    dtype = getattr(torch, name, None) if name else None
    return dtype if isinstance(dtype, torch.dtype) else default
