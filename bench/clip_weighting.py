"""Tried: clipped grids chosen by the Hessian-weighted error Σ_j H_jj (w_j − ŵ_j)² instead of
the plain squared error Σ_j (w_j − ŵ_j)² of ``-clip`` (AWQ's auto_clip weighs by the inputs too).

On MiniLM's 36 searched layers (Hessians from ``--samples`` ``stdlib-docs`` samples × 64 tokens),
per level, the layer error tr(ΔW H ΔWᵀ) of the weighted choice over that of the product's
choice: geometric mean, range and the layers where it is lower. The weighted choice is swapped
into the product's own RTN and GPTQ code for the run (``grid_params``, the one function both call
to pick a group's grid), so everything else is the product's.

    python bench/clip_weighting.py          # CPU, about 40 s on 2 cores
"""

from __future__ import annotations

import argparse

import torch
from gptq_act_order import minilm_hessians, print_ratios

import mpsearch.workers.gptq as gptq
import mpsearch.workers.quantize as quantize
from mpsearch.spaces.options import QuantOption
from mpsearch.workers.gptq import CLIP_SHRINKS, hessian_error, quant
from mpsearch.workers.registry import LayerInputs, quantize_weight

LEVELS = ("int3-g64-asym-clip", "int4-g128-asym-clip", "int3-g64-asym-clip-gptq",
          "int4-g128-asym-clip-gptq", "int3-g64-asym-clip-gptq-act", "int4-g128-asym-clip-gptq-act")
PRODUCT_GRID = gptq.grid_params


class WeightedGrid:
    """``grid_params`` with each column's squared error weighted by H_jj. RTN asks for every
    group of the layer at once (rows × groups, group); GPTQ asks group by group, in column order
    (plain and static act-order groups alike), so the k-th call is columns k·g .. (k+1)·g."""

    def __init__(self, diag: torch.Tensor | None, rtn: bool) -> None:
        self.diag, self.rtn, self.calls = diag, rtn, 0

    def __call__(self, w, bits, symmetric, clip=False):
        if not clip or self.diag is None:
            return PRODUCT_GRID(w, bits, symmetric, clip)
        g = w.shape[1]
        if self.rtn:
            d = self.diag.reshape(-1, g).repeat(w.shape[0] // (self.diag.numel() // g), 1)
        else:
            d = self.diag[self.calls * g:(self.calls + 1) * g].reshape(1, -1)
            self.calls += 1
        scale, zero, q_min, q_max = gptq._minmax_grid(w, bits, symmetric)
        best = ((quant(w, scale, zero, q_min, q_max) - w).square() * d).sum(dim=1, keepdim=True)
        for shrink in CLIP_SHRINKS[1:]:
            s, z, _, _ = gptq._minmax_grid(w * shrink, bits, symmetric)
            err = ((quant(w, s, z, q_min, q_max) - w).square() * d).sum(dim=1, keepdim=True)
            better = err < best
            scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
            best = torch.where(better, err, best)
        return scale, zero, q_min, q_max


def quantized(W, option, H, diag):
    grid = WeightedGrid(diag, rtn=option.rounding == "rtn")
    gptq.grid_params = quantize.grid_params = grid
    try:
        return quantize_weight(W, option, inputs=LayerInputs(hessian=H))
    finally:
        gptq.grid_params = quantize.grid_params = PRODUCT_GRID


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {label: [] for label in LEVELS}
    for W, H in minilm_hessians("minilm", "cpu", args.samples).values():
        for label in LEVELS:
            option = QuantOption.from_label(label)
            plain = hessian_error(W, quantized(W, option, H, None), H)
            weighted = hessian_error(W, quantized(W, option, H, torch.diagonal(H).clone()), H)
            ratios[label].append(weighted / plain)
    print_ratios(ratios, "plain clip")


if __name__ == "__main__":
    main()
