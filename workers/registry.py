"""The format registry: one handler per option format, used by the worker, the level database and
every export, so an option is quantized, calibrated, charged and written one way.

A handler (torchao-style: :class:`~mpsearch.spaces.options.QuantOption` is the config dataclass,
the handler the code) answers, for the options of its format:

- ``statistics(option)``: which calibration statistics of the layer's inputs it needs
  (:data:`HESSIAN` H = 2XᵀX/n for GPTQ, :data:`ACT_NORM` ‖X_j‖₂ for Wanda; empty: none);
- ``quantize(w, option, inputs)``: the *dequantized* weight (``w``'s shape and dtype) that a trial
  is scored with;
- ``encode(w, option, inputs)``: the stored parts (:class:`Encoded`: codes, scales, zero points,
  sparsity mask), from which ``Encoded.dequantize()`` rebuilds exactly ``quantize``'s result;
  exports write these parts, so a checkpoint holds the weights that were scored;
- ``effective_bits(option, in_features)``: its cost, read from the one table of formats in
  :mod:`mpsearch.spaces.options` (``LAYOUTS``; the spaces package stays free of torch).

Sparsity is the same for every format: the base class prunes (magnitude, or Wanda with
``inputs.act_norm``) and the format quantizes the survivors; pruned weights stay exactly zero.

For the level database (``workers/level_db.py``): ask ``handler_for(option)``, gather
``statistics(option)`` once per layer, and call ``quantize`` (or ``quantize_levels`` for several
options of one layer at once: a handler may batch them, e.g. GPTQ levels sharing one Hessian;
the default loops). ``IntHandler.encode`` of a GPTQ option needs the scales and zero points GPTQ
chose: :func:`mpsearch.workers.gptq.gptq_quantize` must keep offering ``grids=`` (a list it fills
with one (scale, zero) pair per group, in column order).

Usage: ``handler_for(option).quantize(w, option, LayerInputs(hessian=H))``, or the shorthand
:func:`quantize_weight`. An unknown format raises :class:`FormatError` listing the known ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mpsearch.spaces.options import FORMATS, QuantOption

from .errors import WorkerError
from .formats import (
    FP8_DTYPES,
    GGUF_BLOCK,
    MXFP4_BLOCK,
    NF4_BLOCK,
    NVFP4_BLOCK,
    as_blocks,
    fp8_encode,
    gguf_decode,
    gguf_encode,
    mxfp4_encode,
    nf4_decode,
    nf4_encode,
    nvfp4_encode,
)
from .gptq import gptq_quantize
from .quantize import int_codes, int_grid
from .sparsity import prune_mask

HESSIAN, ACT_NORM = "hessian", "act_norm"  # the calibration statistics a handler may ask for


class FormatError(WorkerError, ValueError):
    """An option's format has no handler, or a handler lacks what it needs to quantize."""


@dataclass(frozen=True)
class LayerInputs:
    """What a handler may use besides the weight: the layer's calibration statistics (those its
    ``statistics`` names; the others may be None) and GPTQ's settings."""

    hessian: torch.Tensor | None = None  # H = 2XᵀX/n (in × in)
    act_norm: torch.Tensor | None = None  # ‖X_j‖₂ per input column (in,)
    gptq_percdamp: float = 0.01  # GPTQ's dampening λ = percdamp · mean(diag H) (the reference's)
    gptq_block_size: int = 128  # GPTQ's lazy-batch width (the reference's)


NO_INPUTS = LayerInputs()


@dataclass(frozen=True)
class Encoded:
    """One weight (out × in) as its format stores it.

    ``values``: int formats, the integer codes q (float32 holding integers; unsigned [0, 2^b − 1]
    when asymmetric, signed [−2^(b−1), 2^(b−1) − 1] when symmetric), with ŵ = s · (q − z);
    ``fp16``, the fp16 weight; FP8, the float8 tensor; NVFP4/MXFP4, the E2M1 values (float32);
    NF4, the code indices (int64). ``scale``: out × (in / block), float32 holding exactly the
    stored scale (fp16, E4M3 or E8M0 values); None for fp16. ``zero_point``: asymmetric int
    codes z, out × groups. ``global_scale``: NVFP4's per-tensor fp32 scale. ``mask``: the kept
    weights of a sparse option (bool, out × in), else None.
    """

    option: QuantOption
    values: torch.Tensor
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight these parts stand for: exactly what :meth:`FormatHandler.quantize` returns."""
        dense = handler_for(self.option).decode(self)
        if self.mask is not None:
            keep = self.mask.to(dtype)
            return dense.to(dtype) * keep
        return dense.to(dtype)


class FormatHandler(ABC):
    """How the options of some formats are quantized, calibrated, charged and stored.

    Subclasses name their ``formats`` and implement :meth:`encode_dense` and :meth:`decode`;
    :meth:`quantize_dense` defaults to decoding the encoding, and is overridden only where the
    math has a shorter exact path. Handlers are stateless: one instance serves every option.
    """

    formats: ClassVar[tuple[str, ...]]

    # -- what it needs ------------------------------------------------------------------------
    def statistics(self, option: QuantOption) -> frozenset[str]:
        """The calibration statistics ``option`` uses: :data:`ACT_NORM` for Wanda pruning."""
        wanda = option.sparse and option.sparsity_method == "wanda"
        return frozenset({ACT_NORM}) if wanda else frozenset()

    def effective_bits(self, option: QuantOption, in_features: int) -> float:
        """Bits stored per weight (values, scales, zero points, sparsity metadata)."""
        return option.effective_bits(in_features)

    # -- quantizing ---------------------------------------------------------------------------
    def keep_mask(self, w: torch.Tensor, option: QuantOption,
                  inputs: LayerInputs) -> torch.Tensor | None:
        """The weights ``option`` keeps (bool, ``w``'s shape), or None if it is dense. Wanda
        without ``inputs.act_norm`` falls back to magnitude."""
        if not option.sparse:
            return None
        return prune_mask(w, option.sparsity, option.sparsity_pattern, option.sparsity_method,
                          inputs.act_norm)

    def quantize(self, w: torch.Tensor, option: QuantOption,
                 inputs: LayerInputs = NO_INPUTS) -> torch.Tensor:
        """``w`` (out × in) as stored under ``option``, dequantized to ``w``'s dtype."""
        keep = self.keep_mask(w, option, inputs)
        if keep is None:
            return self.quantize_dense(w, option, inputs).to(w.dtype)
        k = keep.to(w.dtype)
        return self.quantize_dense(w * k, option, inputs).to(w.dtype) * k

    def quantize_levels(self, w: torch.Tensor, options: Sequence[QuantOption],
                        inputs: LayerInputs = NO_INPUTS) -> list[torch.Tensor]:
        """:meth:`quantize` for several options of one layer (a handler may batch them)."""
        return [self.quantize(w, option, inputs) for option in options]

    def quantize_dense(self, w: torch.Tensor, option: QuantOption,
                       inputs: LayerInputs) -> torch.Tensor:
        """``w`` in ``option``'s number format, its sparsity ignored (float32 or ``w``'s dtype)."""
        return self.decode(self.encode_dense(w, option, inputs))

    # -- storing ------------------------------------------------------------------------------
    def encode(self, w: torch.Tensor, option: QuantOption,
               inputs: LayerInputs = NO_INPUTS) -> Encoded:
        """The stored parts of ``w`` under ``option``; ``.dequantize(w.dtype)`` equals
        :meth:`quantize`'s result exactly."""
        keep = self.keep_mask(w, option, inputs)
        dense = w if keep is None else w * keep.to(w.dtype)
        enc = self.encode_dense(dense, option, inputs)
        return Encoded(option, enc.values, enc.scale, enc.zero_point, enc.global_scale, keep)

    # -- exporting ----------------------------------------------------------------------------
    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        """The compressed-tensors ``QuantizationArgs`` (as keyword arguments) that store
        ``option``'s weights exactly; None: the layer stays dense (unquantized). Raises
        :class:`FormatError` (the reason, without the layer) if the format cannot hold it."""
        raise FormatError(f"compressed-tensors has no {option.format} format")

    def refuse_sparsity(self, option: QuantOption, target: str) -> None:
        if option.sparse:
            raise FormatError(f"it prunes, and {target} stores no pruned weights; drop the "
                              "sparsity from the space")

    @abstractmethod
    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        """The stored parts of ``w`` in ``option``'s number format (no mask applied)."""

    @abstractmethod
    def decode(self, enc: Encoded) -> torch.Tensor:
        """The dense weight (out × in, float32) that ``enc``'s values and scales stand for."""


class Fp16Handler(FormatHandler):
    """``fp16``: the weight rounded to half precision, nothing else stored."""

    formats = ("fp16",)

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        return Encoded(option, w.to(torch.float16))

    def decode(self, enc: Encoded) -> torch.Tensor:
        return enc.values

    def quantize_dense(self, w: torch.Tensor, option: QuantOption,
                       inputs: LayerInputs) -> torch.Tensor:
        return w.to(torch.float16)

    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        self.refuse_sparsity(option, "compressed-tensors")
        return None  # dense: the fp16-rounded weight in the checkpoint's dtype


class IntHandler(FormatHandler):
    """``int``: b-bit integers per group (or channel), rounded by RTN (:mod:`.quantize`, optionally
    MSE-clipped) or GPTQ (:mod:`.gptq`, which needs the layer's Hessian)."""

    formats = ("int",)

    def statistics(self, option: QuantOption) -> frozenset[str]:
        gptq = frozenset({HESSIAN}) if option.gptq else frozenset()
        return super().statistics(option) | gptq

    def _hessian(self, option: QuantOption, inputs: LayerInputs) -> torch.Tensor:
        if inputs.hessian is None:
            raise FormatError(f"option {option.label}: {option.rounding} rounding needs the "
                              "layer's calibration Hessian; quantize it with mpsearch.workers.gptq "
                              "(LayerInputs(hessian=H))")
        return inputs.hessian

    def quantize(self, w: torch.Tensor, option: QuantOption,
                 inputs: LayerInputs = NO_INPUTS) -> torch.Tensor:
        if not option.gptq:
            return super().quantize(w, option, inputs)
        # prune as the option says, then GPTQ the survivors, compensating in the kept ones
        return gptq_quantize(w, self._hessian(option, inputs), option.bits, option.group_size,
                             option.symmetric, inputs.gptq_block_size, inputs.gptq_percdamp,
                             self.keep_mask(w, option, inputs),
                             act_order=option.act_order, clip=option.clip)

    def encode(self, w: torch.Tensor, option: QuantOption,
               inputs: LayerInputs = NO_INPUTS) -> Encoded:
        if not option.gptq:
            return super().encode(w, option, inputs)
        keep = self.keep_mask(w, option, inputs)
        grids: list[tuple[torch.Tensor, torch.Tensor]] = []
        # float32 in, float32 out: ŵ = s·(q − z) exactly, so the codes are read back exactly
        # (a bf16 ŵ of an 8-bit code can be a whole step off); GPTQ itself runs in float32
        q_hat = gptq_quantize(w.float(), self._hessian(option, inputs), option.bits,
                              option.group_size, option.symmetric, inputs.gptq_block_size,
                              inputs.gptq_percdamp, keep, grids=grids,
                              act_order=option.act_order, clip=option.clip)
        scale = torch.cat([s for s, _ in grids], dim=1)
        zero = torch.cat([z for _, z in grids], dim=1)
        group = option.group_for(w.shape[1])
        _, _, q_min, q_max = self._range(option)
        g = as_blocks(q_hat, group)
        codes = int_codes(g, (scale.reshape(-1, 1), zero.reshape(-1, 1), q_min, q_max))
        return Encoded(option, codes.reshape(w.shape), scale,
                       None if option.symmetric else zero, mask=keep)

    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        """The ``group`` strategy (``channel`` for one group per row), with zero points when
        asymmetric: vLLM's layouts (``export_ct`` writes them so that transformers loads them)."""
        self.refuse_sparsity(option, "compressed-tensors")
        strategy: dict[str, object] = {"strategy": "channel"} if option.group_size is None else \
            {"strategy": "group", "group_size": option.group_size}
        # GPTQ in activation order with static groups stores the plain layout; compressed-tensors
        # names it actorder "weight" (no g_idx: loaders read it as the plain group layout)
        order = {"actorder": "weight"} if option.act_order else {}
        return {"num_bits": option.bits, "type": "int", "symmetric": option.symmetric, **strategy,
                **order}

    @staticmethod
    def _range(option: QuantOption) -> tuple[None, None, int, int]:
        if option.symmetric:
            return None, None, -(2 ** (option.bits - 1)), 2 ** (option.bits - 1) - 1
        return None, None, 0, 2**option.bits - 1

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        group = option.group_for(w.shape[1])
        g = as_blocks(w, group)
        grid = int_grid(g, option.bits, option.symmetric, option.clip)
        rows = w.shape[0]
        scale, zero = grid[0].reshape(rows, -1), grid[1].reshape(rows, -1)
        return Encoded(option, int_codes(g, grid).reshape(w.shape), scale,
                       None if option.symmetric else zero)

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None
        rows, cols = enc.values.shape
        group = enc.option.group_for(cols)
        q = enc.values.float().reshape(-1, group)
        s = enc.scale.reshape(-1, 1)
        z = torch.zeros_like(s) if enc.zero_point is None else enc.zero_point.reshape(-1, 1)
        return (s * (q - z)).reshape(rows, cols)


class Fp8Handler(FormatHandler):
    """``fp8_e4m3`` / ``fp8_e5m2``: float8 values, one fp16 scale per output channel."""

    formats = tuple(FP8_DTYPES)

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        values, scale = fp8_encode(w, option.format)
        return Encoded(option, values, scale)

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None
        return enc.values.float() * enc.scale

    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        self.refuse_sparsity(option, "compressed-tensors")
        if option.format != "fp8_e4m3":
            raise FormatError("compressed-tensors stores FP8 as E4M3 only")
        return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}


class Nvfp4Handler(FormatHandler):
    """``nvfp4``: E2M1 values, an E4M3 scale per 16, one fp32 scale per tensor."""

    formats = ("nvfp4",)

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        values, s, g = nvfp4_encode(w)
        rows = w.shape[0]
        return Encoded(option, values.reshape(w.shape), s.reshape(rows, -1), global_scale=g)

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None and enc.global_scale is not None
        values = as_blocks(enc.values, NVFP4_BLOCK)
        return (values * enc.scale.reshape(-1, 1) * enc.global_scale).reshape(enc.values.shape)


    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        """``nvfp4-pack-quantized`` (compressed-tensors' NVFP4A16): E4M3 scales per 16 and the
        per-tensor scale, stored as its inverse (``weight_global_scale`` = 1/g)."""
        self.refuse_sparsity(option, "compressed-tensors")
        return {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                "symmetric": True, "dynamic": False, "scale_dtype": torch.float8_e4m3fn,
                "zp_dtype": torch.float8_e4m3fn}


class Mxfp4Handler(FormatHandler):
    """``mxfp4``: E2M1 values, an E8M0 power-of-two scale per 32 (OCP MX v1.0)."""

    formats = ("mxfp4",)

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        values, scale = mxfp4_encode(w)
        return Encoded(option, values.reshape(w.shape), scale.reshape(w.shape[0], -1))

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None
        values = as_blocks(enc.values, MXFP4_BLOCK)
        return (values * enc.scale.reshape(-1, 1)).reshape(enc.values.shape)

    def compressed_tensors_args(self, option: QuantOption,
                                in_features: int) -> dict[str, Any] | None:
        """``mxfp4-pack-quantized`` (compressed-tensors' MXFP4A16): E8M0 exponents per 32."""
        self.refuse_sparsity(option, "compressed-tensors")
        return {"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32,
                "symmetric": True, "dynamic": False, "scale_dtype": torch.uint8,
                "zp_dtype": torch.uint8}


class Nf4Handler(FormatHandler):
    """``nf4``: QLoRA NormalFloat-4 code indices, an fp16 absmax per 64."""

    formats = ("nf4",)

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        indices, absmax = nf4_encode(w)
        return Encoded(option, indices.reshape(w.shape), absmax.reshape(w.shape[0], -1))

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None
        blocks = enc.values.reshape(-1, NF4_BLOCK)
        return nf4_decode(blocks, enc.scale.reshape(-1, 1)).reshape(enc.values.shape)


class GgufHandler(FormatHandler):
    """GGUF's legacy block formats (``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q8_0``): codes per
    block of 32 with an fp16 scale (and minimum, ``_1``), bit for bit as llama.cpp quantizes.
    ``Encoded.values`` are the codes, ``scale`` d and ``zero_point`` the minimum m (``_1``)."""

    formats = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")

    def encode_dense(self, w: torch.Tensor, option: QuantOption, inputs: LayerInputs) -> Encoded:
        q, d, m = gguf_encode(w, option.format)
        rows = w.shape[0]
        return Encoded(option, q.reshape(w.shape), d.reshape(rows, -1),
                       None if m is None else m.reshape(rows, -1))

    def decode(self, enc: Encoded) -> torch.Tensor:
        assert enc.scale is not None
        m = None if enc.zero_point is None else enc.zero_point.reshape(-1, 1)
        q = as_blocks(enc.values, GGUF_BLOCK)
        return gguf_decode(q, enc.scale.reshape(-1, 1), m, enc.option.format).reshape(
            enc.values.shape)


HANDLERS: dict[str, FormatHandler] = {
    fmt: handler() for handler in (Fp16Handler, IntHandler, Fp8Handler, Nvfp4Handler,
                                   Mxfp4Handler, Nf4Handler, GgufHandler)
    for fmt in handler.formats
}
assert set(HANDLERS) == set(FORMATS), "every format of spaces.options has exactly one handler"


def handler_for(option: QuantOption | str) -> FormatHandler:
    """The handler of ``option``'s format (or of the format named); FormatError if none."""
    fmt = option if isinstance(option, str) else option.format
    try:
        return HANDLERS[fmt]
    except KeyError:
        raise FormatError(f"no handler for format {fmt!r}; valid: {', '.join(HANDLERS)}") from None


def needs_calibration(option: QuantOption) -> bool:
    """Whether ``option`` compresses with the layer's calibration inputs (GPTQ, Wanda)."""
    return bool(handler_for(option).statistics(option))


def quantize_weight(w: torch.Tensor, option: QuantOption, act_norm: torch.Tensor | None = None,
                    inputs: LayerInputs | None = None) -> torch.Tensor:
    """The weight ``w`` (out × in) as stored under ``option``, dequantized to ``w``'s dtype.

    ``act_norm`` (‖X_j‖₂ per input column, what Wanda scores by) is a shorthand for
    ``inputs=LayerInputs(act_norm=...)``; GPTQ needs ``inputs`` with the layer's Hessian.
    """
    if inputs is None:
        inputs = LayerInputs(act_norm=act_norm)
    return handler_for(option).quantize(w, option, inputs)


def quantize_dense(w: torch.Tensor, option: QuantOption) -> torch.Tensor:
    """``w`` in ``option``'s number format (its sparsity ignored), dequantized to ``w``'s dtype."""
    return handler_for(option).quantize_dense(w, option, NO_INPUTS).to(w.dtype)
