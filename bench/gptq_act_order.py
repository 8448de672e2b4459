"""Would GPTQ's activation order move issue 16's MiniLM figures? Per layer, the Hessian-weighted
error tr(ΔW H ΔWᵀ) of GPTQ with activation order (columns quantized by decreasing H_jj, static
groups: each group's grid from the original weights, so the stored layout is unchanged; the
``actorder: static`` of llm-compressor) over that of mpsearch's GPTQ (original order, grids
from the compensated weights), on MiniLM's 36 searched layers, Hessians from the first 256
``stdlib-docs`` samples × 64 tokens. A uniform gain moves mixed and uniform configurations alike;
only a gain that differs between the levels a mix uses and the best uniform one changes how far
below uniform a search gets.

    python bench/gptq_act_order.py            # CPU, about 2 minutes on 2 cores
"""

from __future__ import annotations

import math

import torch
from transformers import AutoModel, AutoTokenizer

from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.gptq import (
    HessianAccumulator,
    dampened_inverse_cholesky,
    gptq_quantize,
    grid_params,
    hessian_error,
    quant,
)
from mpsearch.workers.model_loading import inspect_model

LEVELS = ((2, 128), (3, 128), (3, 64), (4, 128))  # (bits, group size), asymmetric


def act_order_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Ŵ by GPTQ in decreasing order of H_jj with static groups (one column at a time)."""
    W = W.clone().float()
    perm = torch.argsort(torch.diagonal(H), descending=True)
    grids = [grid_params(W[:, g:g + group], bits, False) for g in range(0, W.shape[1], group)]
    Wp, Hp = W[:, perm].clone(), H[perm][:, perm]
    U, dead = dampened_inverse_cholesky(Hp)
    Wp[:, dead] = 0
    Q = torch.zeros_like(Wp)
    for i in range(W.shape[1]):
        scale, zero, q_min, q_max = grids[int(perm[i]) // group]
        w = Wp[:, i]
        Q[:, i] = quant(w.unsqueeze(1), scale, zero, q_min, q_max).flatten()
        err = (w - Q[:, i]) / U[i, i]
        Wp[:, i + 1:] -= err.unsqueeze(1) * U[i, i + 1:].unsqueeze(0)
    return Q[:, torch.argsort(perm)]


@torch.no_grad()
def main() -> None:
    path = inspect_model(ModelConfig(name="minilm")).path
    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    texts = load_texts(CalibrationConfig(source="stdlib-docs", samples=256, seq_len=64))
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and "encoder.layer" in n}
    acc = {n: HessianAccumulator(m.in_features) for n, m in layers.items()}
    for n, m in layers.items():
        m.register_forward_pre_hook(lambda _m, inp, n=n: acc[n].add(inp[0]))
    for i in range(0, len(texts), 32):
        model(**tok(texts[i:i + 32], max_length=64, truncation=True, padding=True,
                    return_tensors="pt"))
    ratios: dict[tuple[int, int], list[float]] = {level: [] for level in LEVELS}
    for n, m in layers.items():
        W, H = m.weight.float(), acc[n].H
        for bits, group in LEVELS:
            plain = hessian_error(W, gptq_quantize(W, H, bits, group), H)
            ratios[bits, group].append(hessian_error(W, act_order_gptq(W, H, bits, group), H)
                                       / plain)
    print("| level | act-order error / GPTQ error: geometric mean | min | max |")
    print("| --- | --- | --- | --- |")
    for (bits, group), r in ratios.items():
        geo = math.exp(sum(map(math.log, r)) / len(r))
        print(f"| int{bits}-g{group}-asym-gptq | {geo:.3f} | {min(r):.3f} | {max(r):.3f} |")


if __name__ == "__main__":
    main()
