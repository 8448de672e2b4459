"""Integer round-to-nearest quantization (plain and MSE-clipped) as pure tensor functions.

:func:`int_grid` picks each group's stored grid (fp16 scale, zero point, code range) and
:func:`quantize_int` returns the *dequantized* weight on it: the worker scores a candidate by running
the model with these weights, which is exactly what the packed kernel would compute. Scales and
zero points are rounded to fp16, the precision the cost model charges for them, so the error
measured is the error the stored format would have. The grid itself is shared with GPTQ
(:mod:`.gptq`), so RTN and GPTQ levels of one option are stored identically.

Dispatch from an option to these functions (and pruning before them) is the registry's
(:mod:`.registry`, :func:`~mpsearch.workers.registry.quantize_weight`).
"""

from __future__ import annotations

import torch

from .formats import as_blocks
from .gptq import CLIP_SHRINKS, grid_params, quant

__all__ = ["CLIP_SHRINKS", "Grid", "int_codes", "int_grid", "quantize_int"]

Grid = tuple[torch.Tensor, torch.Tensor, int, int]  # scale, zero (groups × 1), q_min, q_max


def int_grid(g: torch.Tensor, bits: int, symmetric: bool, clip: bool = False) -> Grid:
    """The stored grid of each row of ``g`` (groups × group, float32).

    Asymmetric: s = (max(w,0) − min(w,0)) / (2^b − 1), z = round(−min/s), q ∈ [0, 2^b − 1];
    symmetric: s = max|w| / (2^(b−1) − 1), z = 0, q ∈ [−2^(b−1), 2^(b−1) − 1]; ŵ = s·(q − z).
    With ``clip``, each group's range is first multiplied by the shrink factor of
    :data:`CLIP_SHRINKS` that minimizes Σ(w − ŵ)² over the group (a grid search, per group):
    :func:`~.gptq.grid_params`, the grid GPTQ's groups take too.
    """
    return grid_params(g, bits, symmetric, clip)


def int_codes(g: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The integer codes q = clamp(round(w/s) + z, q_min, q_max) of ``g`` on ``grid`` (float)."""
    scale, zero, q_min, q_max = grid
    return torch.clamp(torch.round(g / scale) + zero, q_min, q_max)


def quantize_int(w: torch.Tensor, bits: int, group: int, symmetric: bool,
                 clip: bool = False) -> torch.Tensor:
    """RTN integers, one fp16 scale (and zero point, if asymmetric) per ``group`` inputs, on the
    grid of :func:`int_grid`; dequantized to ``w``'s shape and dtype."""
    g = as_blocks(w, group)
    scale, zero, q_min, q_max = int_grid(g, bits, symmetric, clip)
    return quant(g, scale, zero, q_min, q_max).reshape(w.shape).to(w.dtype)
