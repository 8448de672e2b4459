"""Speed-up of real evaluations from 1 to N GPUs through the whole search loop.

The same loop ``mpsearch run`` uses (Ray worker actors, ``ray.wait``), with one worker per GPU,
scoring random budget-feasible candidates of a Llama-shaped model of ~1.1B parameters built from a
config (random bf16 weights: a throughput figure, not a quality one) on 16K calibration tokens.
Each worker's variant cache is warmed first (every uniform option once), so the timed part is
evaluations, not first-time quantization. Prints evaluations per second for each worker count and
the speed-up over one.

    python bench/gpu_scaling.py --tokenizer DIR --gpus 1 2            # on a machine with 2 GPUs
    python bench/gpu_scaling.py --model PATH --device cpu --gpus 1 2  # the same loop on CPUs
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from mpsearch.cluster.executor import RayExecutor
from mpsearch.cluster.ray_runtime import connect
from mpsearch.searcher.loop import Outcome, run_search
from mpsearch.searcher.random_search import RandomSearcher
from mpsearch.spaces import Budget, Candidate, Cost, LayerRule, build_space, parse_option
from mpsearch.workers.calibration import stdlib_texts
from mpsearch.workers.config import ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import WorkerSetup

OPTIONS = ("int3-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16")


def build_llama_1b(out: Path, tokenizer: Path) -> str:
    """Save a Llama of TinyLlama's shape (hidden 2048, 22 layers) with random bf16 weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                         num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                         max_position_embeddings=4096, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)
    return str(out)


def long_texts(samples: int, words: int) -> tuple[str, ...]:
    """``samples`` texts of about ``words`` words each, from the built-in prose corpus."""
    paragraphs, out, i = stdlib_texts(), [], 0
    for _ in range(samples):
        text: list[str] = []
        while len(text) < words:
            text += paragraphs[i % len(paragraphs)].split()
            i += 1
        out.append(" ".join(text))
    return tuple(out)


class NullRecorder:
    def __init__(self) -> None:
        self.n = 0

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        self.n += 1
        return self.n

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        assert outcome.objective is not None, outcome.error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: build the 1.1B Llama)")
    ap.add_argument("--tokenizer", type=Path, help="directory with tokenizer files for it")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="worker counts")
    ap.add_argument("--evaluations", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), help="option labels")
    ap.add_argument("--depth", type=int, default=1, help="candidates in flight per worker")
    ap.add_argument("--in-process", action="store_true",
                    help="also time Worker.evaluate in this process, without Ray")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    path = args.model or build_llama_1b(tmp / "llama-1b", args.tokenizer)
    info = inspect_model(ModelConfig(name=path))
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.",
                                                tuple(parse_option(o) for o in args.options))],
                        (), info.total_params)
    budget = Budget(avg_bits=4.25)
    setup = WorkerSetup(path, info.kind, "kl", long_texts(args.samples, args.seq_len),
                        args.seq_len, batch_size=1, dtype=args.dtype, device=args.device,
                        threads=1 if args.device == "cpu" else 4)
    use_gpu = args.device == "cuda"
    connect(None, num_cpus=4 * max(args.gpus) + 2, num_gpus=max(args.gpus) if use_gpu else None)
    print(f"model {path}: {info.total_params / 1e9:.2f}B params, {len(space.genes)} layers "
          f"searched; {args.samples} x {args.seq_len} tokens; {args.evaluations} evaluations",
          flush=True)
    if args.in_process:  # the evaluation itself, no Ray: what the loop's overhead is measured against
        from mpsearch.workers.worker import Worker

        worker = Worker(setup, space)
        for option in space.uniform_options():
            worker.evaluate(space.uniform(option))
        searcher = RandomSearcher(space, budget, seed=0)
        cands = searcher.ask(20)
        start = time.perf_counter()
        for c in cands:
            worker.evaluate(c)
        per = (time.perf_counter() - start) / len(cands)
        print(f"in process, no Ray: {1000 * per:.1f} ms per evaluation", flush=True)
        del worker
    rates = {}
    for n in args.gpus:
        t0 = time.perf_counter()
        executor = RayExecutor(setup, space, n, cpus=4 if use_gpu else 1,
                               gpus=1 if use_gpu else 0, depth=args.depth)
        for option in space.uniform_options():  # warm every worker's variant cache
            for i in range(n):
                executor.submit(i, space.uniform(option))
            got = 0
            while got < n:
                got += len(executor.collect())
        ready = time.perf_counter() - t0
        start = time.perf_counter()
        stats = run_search(RandomSearcher(space, budget, seed=n), executor, NullRecorder(),
                           args.evaluations, space, budget)
        seconds = time.perf_counter() - start
        executor.shutdown()
        rates[n] = stats.completed / seconds
        print(f"{n} worker(s): {stats.completed} evaluations in {seconds:.2f} s = "
              f"{rates[n]:.2f}/s ({1000 * seconds / stats.completed:.1f} ms each; "
              f"start and warm-up {ready:.1f} s)", flush=True)
    base = rates[args.gpus[0]]
    for n, r in rates.items():
        print(f"speed-up {args.gpus[0]} -> {n} workers: {r / base:.3f}x")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_scaling.json").write_text(json.dumps(
            {"rates": rates, "evaluations": args.evaluations, "samples": args.samples,
             "seq_len": args.seq_len}, indent=1))


if __name__ == "__main__":
    main()
