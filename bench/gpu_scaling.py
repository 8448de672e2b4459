"""Speed-up of real evaluations from 1 to N GPUs through the whole search loop, and a model larger
than one GPU searched by one worker that spans several.

**Scaling** (default). The same loop ``mpsearch run`` uses (Ray worker actors, ``ray.wait``), one
worker per GPU, scoring random budget-feasible candidates of a Llama of TinyLlama's shape (1.1B
parameters, random bf16 weights: a throughput figure, not a quality one) on 8 × 2,048 tokens.
Two phases, each reported for every worker count and as speed-ups over the first:

- ``cold``: for each count, new workers; every worker's variant cache filled (each uniform option
  once, so quantizing is not timed), then timed at once: what a freshly started machine gives
  when nothing else is done (its first GPU kernels, clocks and allocations fall in the timing);
- ``warm``: one pool of max(N) workers; the level database built across them and read by each
  (``--level-db DIR``, the driver's setup phases), every worker's cache filled, then
  ``--warmup`` untimed evaluations on every worker; then each count
  is timed on the first workers of the same pool, so every count meets the same warmed
  processes and GPUs and the speed-up is the parallelism alone.

**A model larger than one GPU** (``--big``). A Llama of Llama-2-70B's widths with 92 layers (79B
parameters, 158 GB in bf16, more than one H200's 141 GB) is built from its config on the meta
device and materialised with random weights block by block on the devices its placement gives
(nothing is written to disk); one worker with ``--big-gpus`` GPUs searches it through the same
loop. Prints the placement per device, evaluations per second, the ratio of an evaluation to a
plain forward pass over the same tokens, and the memory of each device.

    python bench/gpu_scaling.py --gpus 1 2 [--level-db DIR]             # nvidia-h200-x2
    python bench/gpu_scaling.py --big --big-gpus 2                      # nvidia-h200-x2
    python bench/gpu_scaling.py --model PATH --device cpu --gpus 1 2    # the loop on CPUs
    python bench/gpu_scaling.py --big --shape tiny --device cpu         # the big path on CPUs

Without ``--tokenizer DIR`` a word-piece tokenizer is trained on the built-in corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mpsearch.cluster.executor import RayExecutor
from mpsearch.cluster.ray_runtime import connect
from mpsearch.searcher.loop import Outcome, run_search
from mpsearch.searcher.random_search import RandomSearcher
from mpsearch.spaces import Budget, Candidate, Cost, LayerRule, SearchSpace, build_space, parse_option
from mpsearch.workers.calibration import stdlib_texts
from mpsearch.workers.config import ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.placement import size
from mpsearch.workers.worker import WorkerSetup

OPTIONS = ("int3-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16")
BIG_OPTIONS = ("int4-g128-asym", "int8-g128-asym")
# Attention projections only: their two variants (56 GB) fit on the GPUs beside the weights.
BIG_LAYERS = r"layers\.\d+\.self_attn\."
GiB = 1 << 30

# Llama shapes: TinyLlama's (1.1B) and Llama-2-70B's widths with 92 layers (79B); "tiny" checks
# the big path on CPUs.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    "80b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=92,
                num_attention_heads=64, num_key_value_heads=8),
    "tiny": dict(vocab_size=32000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
}


def llama_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=0,
                       dtype="bfloat16", architectures=["LlamaForCausalLM"])


def copy_tokenizer(tokenizer: Path | None, out: Path) -> None:
    """The tokenizer files of ``tokenizer``, or (None) a word-piece tokenizer trained on the
    standard-library corpus (bench/setup_time.py's: the GPU machine has no tokenizer to copy)."""
    if tokenizer is None:
        from setup_time import save_tokenizer  # bench/ is on the path of a bench script

        save_tokenizer(out, 32000)
        return
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)


def build_llama_1b(out: Path, tokenizer: Path | None) -> str:
    """Save a Llama of TinyLlama's shape (hidden 2048, 22 layers) with random bf16 weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(llama_config("1b")).to(torch.bfloat16)
    model.save_pretrained(out)
    copy_tokenizer(tokenizer, out)
    return str(out)


def config_only(shape: str, out: Path, tokenizer: Path | None) -> str:
    """A model directory with a config and a tokenizer and no weights (random at load)."""
    out.mkdir(parents=True, exist_ok=True)
    llama_config(shape).save_pretrained(out)
    copy_tokenizer(tokenizer, out)
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


class Recorder:
    """The loop's recorder, keeping only the workers' own seconds per evaluation."""

    def __init__(self) -> None:
        self.n = 0
        self.seconds: list[float] = []

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        self.n += 1
        return self.n

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        assert outcome.objective is not None, outcome.error
        self.seconds.append(outcome.seconds)

    def mean_ms(self) -> float:
        return 1000 * sum(self.seconds) / max(len(self.seconds), 1)


class FirstWorkers:
    """The loop's executor over the first ``n`` workers of a started pool (the others idle)."""

    def __init__(self, pool: RayExecutor, n: int) -> None:
        self.pool, self.n = pool, n
        pool.idle = [i for _ in range(pool.depth) for i in range(n)]

    @property
    def slots(self) -> int:
        return self.n * self.pool.depth

    def submit(self, key: int, candidate: Candidate, attempts: int = 0) -> None:
        self.pool.submit(key, candidate, attempts)

    def collect(self) -> list[tuple[int, Outcome]]:
        return self.pool.collect()


def on_every_worker(executor: RayExecutor, candidates: list[Candidate], workers: int) -> None:
    """Evaluate each candidate once on each of the first ``workers`` workers (untimed)."""
    for candidate in candidates:
        executor.idle = [i for _ in range(executor.depth) for i in range(workers)]
        for i in range(workers):
            executor.submit(-1 - i, candidate)
        got = 0
        while got < workers:
            got += len(executor.collect())


def timed(executor: Any, space: SearchSpace, budget: Budget, evaluations: int,
          seed: int) -> tuple[float, Recorder]:
    recorder = Recorder()
    start = time.perf_counter()
    stats = run_search(RandomSearcher(space, budget, seed=seed), executor, recorder, evaluations,
                       space, budget)
    seconds = time.perf_counter() - start
    assert stats.completed == evaluations, stats
    return seconds, recorder


def scaling(args: argparse.Namespace, setup: WorkerSetup, space: SearchSpace,
            budget: Budget) -> dict[str, Any]:
    use_gpu = args.device == "cuda"
    cpus, gpus = (4, 1) if use_gpu else (1, 0)
    uniform = [space.uniform(o) for o in space.uniform_options()]
    result: dict[str, Any] = {}
    if "cold" in args.phases:
        rates = {}
        for n in args.gpus:
            t0 = time.perf_counter()
            executor = RayExecutor(setup, space, n, cpus=cpus, gpus=gpus, depth=args.depth)
            on_every_worker(executor, uniform, n)
            ready = time.perf_counter() - t0
            executor.idle = [i for _ in range(executor.depth) for i in range(n)]
            seconds, recorder = timed(executor, space, budget, args.evaluations, seed=n)
            executor.shutdown()
            rates[n] = args.evaluations / seconds
            print(f"cold, {n} worker(s): {args.evaluations} evaluations in {seconds:.2f} s = "
                  f"{rates[n]:.2f}/s ({1000 / rates[n]:.1f} ms each, {recorder.mean_ms():.1f} ms "
                  f"in a worker; start and cache {ready:.1f} s)", flush=True)
        result["cold"] = rates
    if "warm" in args.phases:
        top = max(args.gpus)
        t0 = time.perf_counter()
        pool = RayExecutor(setup, space, top, cpus=cpus, gpus=gpus, depth=args.depth)
        if args.level_db:  # built across the workers once, then read by each
            from mpsearch.cluster.warmup import set_up_workers
            from mpsearch.workers.worker import level_database

            set_up_workers(pool, space, level_database(setup),
                           {"model": setup.model_path, "dtype": setup.dtype,
                            "bench": "gpu_scaling", "samples": args.samples,
                            "seq_len": args.seq_len})
        on_every_worker(pool, uniform, top)  # caches filled (from the level database, if any)
        warmup = RandomSearcher(space, budget, seed=10_000).ask(args.warmup)
        on_every_worker(pool, warmup, top)
        print(f"warm pool of {top}: started, caches filled and {args.warmup} evaluations per "
              f"worker in {time.perf_counter() - t0:.1f} s", flush=True)
        rates = {}
        for n in args.gpus:
            seconds, recorder = timed(FirstWorkers(pool, n), space, budget, args.evaluations,
                                      seed=n)
            rates[n] = args.evaluations / seconds
            print(f"warm, {n} worker(s): {args.evaluations} evaluations in {seconds:.2f} s = "
                  f"{rates[n]:.2f}/s ({1000 / rates[n]:.1f} ms each, {recorder.mean_ms():.1f} ms "
                  f"in a worker)", flush=True)
        pool.shutdown()
        result["warm"] = rates
    for phase in ("cold", "warm"):
        if phase in result:
            base = result[phase][args.gpus[0]]
            for n, r in result[phase].items():
                print(f"{phase}: speed-up {args.gpus[0]} -> {n} workers: {r / base:.3f}x")
    return result


def big(args: argparse.Namespace, setup: WorkerSetup, space: SearchSpace,
        budget: Budget) -> dict[str, Any]:
    import ray

    use_gpu = args.device == "cuda"
    k = args.big_gpus
    setup = dataclasses.replace(setup, random_weights=True, devices=tuple(
        f"cuda:{i}" for i in range(k)) if use_gpu else ("cpu",) * k)
    t0 = time.perf_counter()
    executor = RayExecutor(setup, space, 1, cpus=8 if use_gpu else 1, gpus=k if use_gpu else 0,
                           depth=args.depth)
    print(f"one worker over {k} devices started in {time.perf_counter() - t0:.1f} s:")
    for line in ray.get(executor.actors[0].placement.remote()):
        print(f"  {line}")
    t0 = time.perf_counter()
    on_every_worker(executor, [space.uniform(o) for o in space.uniform_options()], 1)
    warmup = RandomSearcher(space, budget, seed=10_000).ask(args.warmup)
    on_every_worker(executor, warmup, 1)
    print(f"cache filled and {args.warmup} evaluations in {time.perf_counter() - t0:.1f} s")
    seconds, recorder = timed(executor, space, budget, args.evaluations, seed=1)
    report = ray.get(executor.actors[0].diagnostics.remote(forward_repeats=3))
    executor.shutdown()
    forward = report["forward_seconds"]
    inside = sum(recorder.seconds) / len(recorder.seconds)
    print(f"{args.evaluations} evaluations in {seconds:.2f} s = {args.evaluations / seconds:.3f}/s;"
          f" an evaluation {1000 * inside:.1f} ms in the worker ({1000 * seconds / args.evaluations:.1f}"
          f" ms through the loop), a plain forward {1000 * forward:.1f} ms: ratio "
          f"{inside / forward:.2f} ({seconds / args.evaluations / forward:.2f} through the loop)")
    for d in report["devices"]:
        memory = (f"allocated {d['allocated'] / GiB:.1f} GiB, peak {d['peak'] / GiB:.1f} GiB of "
                  f"{d['total'] / GiB:.1f} GiB; " if "allocated" in d else "")
        print(f"  {d['device']}: {memory}variants {size(d['variants_device'])} on the device, "
              f"{size(d['variants_host'])} in host memory")
    return {"devices": k, "evaluations": args.evaluations, "seconds": seconds,
            "evaluation_seconds": inside, "forward_seconds": forward,
            "ratio": inside / forward, "memory": report["devices"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: build the Llama of --shape)")
    ap.add_argument("--tokenizer", type=Path,
                    help="directory with tokenizer files for it (default: train one)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="worker counts")
    ap.add_argument("--phases", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    ap.add_argument("--evaluations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed evaluations per worker before the warm timing")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--options", nargs="+", help="option labels (default: by model)")
    ap.add_argument("--layers", help="regex of the searched layers (default: by model)")
    ap.add_argument("--depth", type=int, default=1, help="candidates in flight per worker")
    ap.add_argument("--level-db", help="a level database directory the workers fill and read")
    ap.add_argument("--big", action="store_true", help="one worker over --big-gpus devices")
    ap.add_argument("--big-gpus", type=int, default=2)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="Llama shape (1b; 80b with --big)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    shape = args.shape or ("80b" if args.big else "1b")
    if args.model:
        path = args.model
    elif args.big:
        path = config_only(shape, tmp / f"llama-{shape}", args.tokenizer)
    else:
        path = build_llama_1b(tmp / "llama-1b", args.tokenizer)
    info = inspect_model(ModelConfig(name=path))
    options = args.options or list(BIG_OPTIONS if args.big else OPTIONS)
    layers = args.layers or (BIG_LAYERS if args.big else r"layers\.\d+\.")
    space = build_space(info.layers, [LayerRule(layers, tuple(parse_option(o) for o in options))],
                        (), info.total_params)
    budget = Budget(avg_bits=4.25 if not args.big else 6.0)
    setup = WorkerSetup(path, info.kind, "kl", long_texts(args.samples, args.seq_len),
                        args.seq_len, batch_size=1, dtype=args.dtype, device=args.device,
                        threads=1 if args.device == "cpu" else 4)
    if args.level_db:
        setup = dataclasses.replace(setup, level_db=args.level_db)
    use_gpu = args.device == "cuda"
    count = args.big_gpus if args.big else max(args.gpus)
    connect(None, num_cpus=(8 if args.big else 4) * count + 2 if use_gpu else count + 1,
            num_gpus=count if use_gpu else None)
    print(f"model {path}: {info.total_params / 1e9:.2f}B params "
          f"({info.total_params * 2 / 1e9:.0f} GB in bf16), {len(space.genes)} layers searched "
          f"({', '.join(options)}); {args.samples} x {args.seq_len} tokens; "
          f"{args.evaluations} evaluations", flush=True)
    result = (big if args.big else scaling)(args, setup, space, budget)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "gpu_scaling_big.json" if args.big else "gpu_scaling.json"
        (args.out / name).write_text(json.dumps(
            {**result, "params": info.total_params, "samples": args.samples,
             "seq_len": args.seq_len, "options": options}, indent=1, default=str))


if __name__ == "__main__":
    main()
