"""The in-process evaluation of two checkouts of mpsearch, timed alternately on the same workload.

The workload is bench/gpu_scaling.py's at a size a CPU runs: a Llama of TinyLlama's depth (22
blocks, 154 searched layers) with narrow widths (hidden 256, random bf16 weights), options
int3/int4/int8 g128 asym and fp16, each worker's cache filled with the uniform candidates, then
random budget-feasible candidates (seed 0) timed through ``Worker.evaluate``; then the same
candidates once more, ``apply_`` and ``measure`` timed apart. The objective of the first candidate
is printed in full: two checkouts that score alike print the same digits.

    python bench/eval_compare.py make DIR                    # the model (this checkout's venv)
    for i in 1 2 3; do for t in OLD NEW; do                  # each checkout's own venv
        $t/.venv/bin/python bench/eval_compare.py time DIR --evaluations 40; done; done

``time`` uses only what mpsearch had in commit 8918004 (``Worker``, ``WorkerSetup``,
``build_space``, ``RandomSearcher``), so the one script times both.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

OPTIONS = ("int3-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16")
SHAPE = dict(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=22,
             num_attention_heads=8, num_key_value_heads=2)


def make(out: Path) -> None:
    import torch
    from gpu_scaling import copy_tokenizer  # bench/ is on the path of a bench script
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, max_position_embeddings=4096, pad_token_id=0, dtype="bfloat16",
                         architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    copy_tokenizer(None, out)
    print(f"saved {out}")


def calibration(samples: int, words: int) -> tuple[str, ...]:
    """``samples`` texts of ``words`` words, consecutive runs of the built-in corpus's words."""
    from mpsearch.workers.calibration import stdlib_texts

    corpus = " ".join(stdlib_texts()).split()
    return tuple(" ".join(corpus[i * words:(i + 1) * words]) for i in range(samples))


def time_evaluations(args: argparse.Namespace) -> None:
    import mpsearch.workers
    from mpsearch.searcher.random_search import RandomSearcher
    from mpsearch.spaces import Budget, LayerRule, build_space, parse_option
    from mpsearch.workers.config import ModelConfig
    from mpsearch.workers.model_loading import inspect_model
    from mpsearch.workers.worker import Worker, WorkerSetup

    info = inspect_model(ModelConfig(name=str(args.model)))
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.",
                                                tuple(parse_option(o) for o in OPTIONS))],
                        (), info.total_params)
    setup = WorkerSetup(info.path, info.kind, "kl", calibration(args.samples, args.seq_len),
                        args.seq_len, batch_size=1, dtype="bfloat16", device="cpu", threads=1)
    worker = Worker(setup, space)
    for option in space.uniform_options():
        worker.evaluate(space.uniform(option))
    candidates = RandomSearcher(space, Budget(avg_bits=4.25), seed=0).ask(args.evaluations)
    fixed = worker.evaluate(candidates[0])
    start = time.perf_counter()
    for candidate in candidates:
        worker.evaluate(candidate)
    per = (time.perf_counter() - start) / len(candidates)
    applying = measuring = 0.0
    for candidate in candidates:
        t0 = time.perf_counter()
        worker.apply_(candidate)
        t1 = time.perf_counter()
        worker.measure(candidate.samples)
        applying, measuring = applying + t1 - t0, measuring + time.perf_counter() - t1
    n = len(candidates)
    print(f"{Path(mpsearch.workers.__file__).parent.parent.name}: {len(space.genes)} layers, "
          f"{args.samples} x {args.seq_len} words: {1000 * per:.1f} ms/eval (apply_ "
          f"{1000 * applying / n:.2f} ms, measure {1000 * measuring / n:.1f} ms); first candidate "
          f"{fixed.objective!r} {fixed.extra!r}; load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["make", "time"])
    ap.add_argument("model", type=Path, help="model directory (written by make)")
    ap.add_argument("--evaluations", type=int, default=40)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=32)
    args = ap.parse_args()
    if args.what == "make":
        make(args.model)
    else:
        time_evaluations(args)


if __name__ == "__main__":
    main()
