"""GPTQ in activation order (``-gptq-act``) against plain GPTQ (``-gptq``): error and build time.

1. Per layer, on MiniLM's 36 searched layers, the Hessian-weighted error tr(ΔW H ΔWᵀ) of
   ``int*-gptq-act`` over that of ``int*-gptq`` (the product's handlers, Hessians from the first
   256 ``stdlib-docs`` samples × 64 tokens). A uniform gain moves mixed and uniform configurations
   alike; only a gain that differs between the levels a mix uses and the best uniform one changes
   how far below uniform a search gets.
2. ``--time``: the level database's batched GPTQ (``gptq_encode_batch``) of ``--layers`` layers of
   ``--shape`` (an 8B model's 4096 × 4096 by default), plain against activation order (whose
   Hessians are permuted first), on ``--device``; median of ``--repeats``.

    python bench/gptq_act_order.py                     # CPU, about 2 minutes on 2 cores
    python bench/gptq_act_order.py --time --device cuda --layers 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from mpsearch.spaces.options import QuantOption
from mpsearch.workers.gptq import (
    HessianAccumulator,
    activation_order,
    dampened_inverse_cholesky,
    hessian_error,
    permuted_hessian,
)
from mpsearch.workers.gptq_batch import CAPTURES, gptq_encode_batch
from mpsearch.workers.registry import LayerInputs, quantize_weight

LEVELS = ("int2-g128-asym", "int3-g128-asym", "int3-g64-asym", "int4-g128-asym")


@torch.no_grad()
def errors() -> None:
    from transformers import AutoModel, AutoTokenizer

    from mpsearch.workers.calibration import load_texts
    from mpsearch.workers.config import CalibrationConfig, ModelConfig
    from mpsearch.workers.model_loading import inspect_model

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
    ratios: dict[str, list[float]] = {level: [] for level in LEVELS}
    for n, m in layers.items():
        W, inputs = m.weight.float(), LayerInputs(hessian=acc[n].H)
        for level in LEVELS:
            plain, ordered = (QuantOption.from_label(f"{level}-{r}") for r in ("gptq", "gptq-act"))
            e_plain = hessian_error(W, quantize_weight(W, plain, inputs=inputs), inputs.hessian)
            e_act = hessian_error(W, quantize_weight(W, ordered, inputs=inputs), inputs.hessian)
            ratios[level].append(e_act / e_plain)
    print("| level | -gptq-act error / -gptq error: geometric mean | min | max |")
    print("| --- | --- | --- | --- |")
    for level, r in ratios.items():
        geo = math.exp(sum(map(math.log, r)) / len(r))
        print(f"| {level}-gptq-act | {geo:.3f} | {min(r):.3f} | {max(r):.3f} |")


@torch.inference_mode()
def timing(args) -> None:
    rows, cols = args.shape
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    W = torch.randn(args.layers, rows, cols, device=dev, generator=g) * 0.02
    X = torch.randn(4 * cols, cols, device=dev, generator=g) * \
        torch.rand(cols, device=dev, generator=g).mul(3).add(0.1)
    H = 2 * X.t() @ X / X.shape[0]  # one Hessian for all (a stack of q/k/v-like layers)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def build(ordered: bool) -> float:
        t0 = time.perf_counter()
        perm = torch.stack([activation_order(H)] * args.layers) if ordered else None
        U, dead = dampened_inverse_cholesky(permuted_hessian(H, perm[0]) if ordered else H)
        U, dead = U.expand(args.layers, -1, -1), dead.expand(args.layers, -1)
        gptq_encode_batch(W, U, dead, 4, 128, False, perm=perm)
        sync()
        return time.perf_counter() - t0

    build(False), build(True)  # warm-up (and the CUDA graphs' first capture)
    for name, ordered in (("-gptq", False), ("-gptq-act", True)):
        times = [build(ordered) for _ in range(args.repeats)]
        print(f"{args.layers} × {rows}×{cols} int4-g128-asym{name} on {args.device}: "
              f"{statistics.median(times):.3f} s (median of {args.repeats})")
    print(f"CUDA graph captures: {CAPTURES}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", action="store_true", help="time the batched build instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    timing(args) if args.time else errors()


if __name__ == "__main__":
    main()
