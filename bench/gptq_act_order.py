"""GPTQ's variants against plain GPTQ (``-gptq``): in activation order (``-gptq-act``), on
MSE-clipped grids (``-clip-gptq``) and both (``-clip-gptq-act``); error and build time.

1. Per layer, on MiniLM's 36 searched layers, the Hessian-weighted error tr(ΔW H ΔWᵀ) of each
   variant over that of ``int*-gptq`` (the product's handlers, Hessians from the first
   256 ``stdlib-docs`` samples × 64 tokens). A uniform gain moves mixed and uniform configurations
   alike; only a gain that differs between the levels a mix uses and the best uniform one changes
   how far below uniform a search gets.
2. ``--time``: the level database's batched GPTQ (``gptq_encode_batch``) of ``--layers`` layers of
   ``--shape`` (an 8B model's 4096 × 4096 by default), each variant (activation order permutes
   the Hessians first), on ``--device``; median of ``--repeats``.

    python bench/gptq_act_order.py                     # CPU, about 6 minutes on 2 cores
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
VARIANTS = ("gptq-act", "clip-gptq", "clip-gptq-act")  # each against plain "gptq"


@torch.no_grad()
def minilm_hessians(model_name: str, device: str, samples: int = 256):
    """MiniLM's 36 searched layers and the Hessian of each, from ``samples`` ``stdlib-docs``
    samples × 64 tokens."""
    from transformers import AutoModel, AutoTokenizer

    from mpsearch.workers.calibration import load_texts
    from mpsearch.workers.config import CalibrationConfig, ModelConfig
    from mpsearch.workers.model_loading import inspect_model

    path = inspect_model(ModelConfig(name=model_name)).path
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval().to(device)
    tok = AutoTokenizer.from_pretrained(path)
    texts = load_texts(CalibrationConfig(source="stdlib-docs", samples=samples, seq_len=64))
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and "encoder.layer" in n}
    acc = {n: HessianAccumulator(m.in_features, device) for n, m in layers.items()}
    for n, m in layers.items():
        m.register_forward_pre_hook(lambda _m, inp, n=n: acc[n].add(inp[0]))
    for i in range(0, len(texts), 32):
        model(**tok(texts[i:i + 32], max_length=64, truncation=True, padding=True,
                    return_tensors="pt").to(device))
    return {n: (m.weight.float(), acc[n].H) for n, m in layers.items()}


def print_ratios(ratios: dict[str, list[float]], against: str) -> None:
    """One row per label: the geometric mean of its error ratios, their range, how many < 1."""
    print(f"| level | error / {against} error: geometric mean | min | max | layers lower |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in ratios.items():
        geo = math.exp(sum(map(math.log, r)) / len(r))
        print(f"| {label} | {geo:.3f} | {min(r):.3f} | {max(r):.3f} | "
              f"{sum(x < 1 for x in r)}/{len(r)} |")


@torch.no_grad()
def errors(model_name: str, device: str) -> None:
    ratios: dict[str, list[float]] = {f"{lv}-{v}": [] for lv in LEVELS for v in VARIANTS}
    for W, H in minilm_hessians(model_name, device).values():
        inputs = LayerInputs(hessian=H)
        for level in LEVELS:
            plain = QuantOption.from_label(f"{level}-gptq")
            e_plain = hessian_error(W, quantize_weight(W, plain, inputs=inputs), inputs.hessian)
            for variant in VARIANTS:
                option = QuantOption.from_label(f"{level}-{variant}")
                e = hessian_error(W, quantize_weight(W, option, inputs=inputs), inputs.hessian)
                ratios[f"{level}-{variant}"].append(e / e_plain)
    print_ratios(ratios, "-gptq")


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

    def build(ordered: bool, clip: bool) -> float:
        t0 = time.perf_counter()
        perm = torch.stack([activation_order(H)] * args.layers) if ordered else None
        U, dead = dampened_inverse_cholesky(permuted_hessian(H, perm[0]) if ordered else H)
        U, dead = U.expand(args.layers, -1, -1), dead.expand(args.layers, -1)
        gptq_encode_batch(W, U, dead, 4, 128, False, perm=perm, clip=clip)
        sync()
        return time.perf_counter() - t0

    variants = (("-gptq", False, False), ("-gptq-act", True, False), ("-clip-gptq", False, True),
                ("-clip-gptq-act", True, True))
    for _, ordered, clip in variants:  # warm-up (and the CUDA graphs' first capture)
        build(ordered, clip)
    for name, ordered, clip in variants:
        times = [build(ordered, clip) for _ in range(args.repeats)]
        print(f"{args.layers} × {rows}×{cols} int4-g128-asym{name} on {args.device}: "
              f"{statistics.median(times):.3f} s (median of {args.repeats})")
    print(f"CUDA graph captures: {CAPTURES}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", action="store_true", help="time the batched build instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="minilm", help="the encoder of the error table")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    timing(args) if args.time else errors(args.model, args.device)


if __name__ == "__main__":
    main()
