"""Integer round-to-nearest quantization (plain and MSE-clipped), and the dispatcher over formats.

Every function returns the *dequantized* weight (same shape and dtype as the input): the worker
scores a candidate by running the model with these weights, which is exactly what the packed
kernel would compute. Scales and zero points are rounded to fp16, the precision the cost model
charges for them, so the error measured is the error the stored format would have.

:func:`quantize_weight` turns one weight into its stored form under any
:class:`~mpsearch.spaces.options.QuantOption`: prune first (:mod:`.sparsity`), then quantize the
survivors with the option's number format (integers here, the float formats in :mod:`.formats`).
The integer grid itself (scale, zero point, code range) is shared with GPTQ (:mod:`.gptq`), so RTN
and GPTQ levels of one option are stored identically.
"""

from __future__ import annotations

import torch

from mpsearch.spaces.options import QuantOption

from .formats import FP8_DTYPES, as_blocks, quantize_fp8, quantize_mxfp4, quantize_nf4, quantize_nvfp4
from .gptq import grid_params, quant
from .sparsity import prune_mask

# MSE clipping tries these fractions of each group's range (1.0 down to 0.5 in steps of 0.025) and
# keeps the one of least squared error; 1.0 is plain RTN, so clipping never does worse. The range
# follows AWQ's auto_clip (max_shrink 0.5), at twice its resolution.
CLIP_SHRINKS = tuple(1.0 - i / 40 for i in range(21))


def quantize_int(w: torch.Tensor, bits: int, group: int, symmetric: bool,
                 clip: bool = False) -> torch.Tensor:
    """RTN integers, one fp16 scale (and zero point, if asymmetric) per ``group`` inputs.

    Asymmetric: s = (max(w,0) − min(w,0)) / (2^b − 1), z = round(−min/s), q ∈ [0, 2^b − 1];
    symmetric: s = max|w| / (2^(b−1) − 1), z = 0, q ∈ [−2^(b−1), 2^(b−1) − 1]; ŵ = s·(q − z).
    With ``clip``, each group's range is first multiplied by the shrink factor of
    :data:`CLIP_SHRINKS` that minimizes Σ(w − ŵ)² over the group (a grid search, per group).
    """
    g = as_blocks(w, group)
    best = _rtn(g, bits, symmetric, 1.0)
    if clip:
        best_err = (best - g).square().sum(dim=1, keepdim=True)
        for shrink in CLIP_SHRINKS[1:]:
            cand = _rtn(g, bits, symmetric, shrink)
            err = (cand - g).square().sum(dim=1, keepdim=True)
            better = err < best_err
            best = torch.where(better, cand, best)
            best_err = torch.where(better, err, best_err)
    return best.reshape(w.shape).to(w.dtype)


def _rtn(g: torch.Tensor, bits: int, symmetric: bool, shrink: float) -> torch.Tensor:
    """``g`` (groups × group) on the grid fitted to its range scaled by ``shrink``."""
    scale, zero, q_min, q_max = grid_params(g * shrink, bits, symmetric)
    return quant(g, scale, zero, q_min, q_max)


def quantize_dense(w: torch.Tensor, option: QuantOption) -> torch.Tensor:
    """``w`` in ``option``'s number format (its sparsity ignored), dequantized to ``w``'s dtype."""
    fmt = option.format
    if fmt == "fp16":
        return w.to(torch.float16).to(w.dtype)
    if fmt == "int":
        if option.rounding != "rtn":
            raise ValueError(f"option {option.label}: {option.rounding} rounding needs the layer's "
                             "calibration Hessian; quantize it with mpsearch.workers.gptq")
        return quantize_int(w, option.bits, option.group_for(w.shape[1]), option.symmetric,
                            option.clip)
    if fmt in FP8_DTYPES:
        out = quantize_fp8(w, fmt)
    elif fmt == "nvfp4":
        out = quantize_nvfp4(w)
    elif fmt == "mxfp4":
        out = quantize_mxfp4(w)
    elif fmt == "nf4":
        out = quantize_nf4(w)
    else:
        raise ValueError(f"no quantizer for format {fmt!r}")
    return out.to(w.dtype)


def quantize_weight(w: torch.Tensor, option: QuantOption,
                    act_norm: torch.Tensor | None = None) -> torch.Tensor:
    """The weight ``w`` (out × in) as stored under ``option``, dequantized to ``w``'s dtype.

    A sparse option prunes first (``act_norm``, the per-input-feature norms ‖X_j‖₂ of the
    calibration inputs, is what Wanda scores by; without it Wanda falls back to magnitude), then
    quantizes the survivors; pruned weights stay exactly zero.
    """
    if not option.sparse:
        return quantize_dense(w, option)
    keep = prune_mask(w, option.sparsity, option.sparsity_pattern, option.sparsity_method, act_norm)
    keep = keep.to(w.dtype)
    return quantize_dense(w * keep, option) * keep
