"""How close one candidate evaluation comes to the cost of a plain forward pass plus the objective.

    python bench/worker_throughput.py                                   # CPU, packaged MiniLM
    python bench/worker_throughput.py --device cuda --model llama-1b    # Llama-shaped, ~1.1B, bf16
    python bench/worker_throughput.py --device cuda --model llama-8b    # 8B-shaped, cache on host
    python bench/worker_throughput.py --gptq-vs-rtn                     # MiniLM, objective by level

For each model it prints (all times are medians over the timed repetitions, device synchronized):

- ``forward+objective``: the worker scoring the model as it stands (no layer changes): one forward
  pass over the calibration tokens plus the objective, the floor of any evaluation;
- ``evaluate (random)``: a random candidate of the default space (every gene drawn uniformly, so
  almost every layer changes), variant cache warm; ``evaluate (2 genes)``: a candidate differing
  from the last in two genes, the step of an evolutionary search;
- the ratio of each to ``forward+objective`` (targets: ≤ 1.25 on CPU with MiniLM, ≤ 1.15 on a GPU
  with the 1.1B model);
- ``naive``: re-quantizing every searched Linear from the full-precision weight for the candidate
  (RTN, no cache), alone and plus the forward pass.

The Llama-shaped models are built from a config with random weights on the GPU (no download) and
scored with next-token KL on random token ids (8 × 2048 = 16K tokens): a throughput figure, not a
quality one. llama-8b keeps every variant in pinned host memory (``cache_device_bytes=0``) and
copies changed layers to per-layer device slots asynchronously.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

import torch

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace
from mpsearch.spaces.spec import DEFAULT_OPTIONS
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.layers import discover_layers, set_weight_
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.registry import quantize_weight
from mpsearch.workers.worker import Worker, WorkerSetup

LLAMA = {  # name: (hidden, layers, intermediate, heads, kv heads, vocab)
    "llama-1b": (2048, 22, 5632, 32, 4, 32000),
    "llama-8b": (4096, 32, 14336, 32, 8, 128256),
    "llama-tiny": (256, 2, 768, 8, 2, 1000),  # a CPU smoke test of the GPU path
}
# The 8B cache holds 14 GB of bf16 weights per option in pinned host memory: three levels keep it
# at 42 GB, inside the GPU machine's 128 GB.
LLAMA_8B_OPTIONS = ("int3-g128-asym", "int4-g128-asym", "int8-g128-asym")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def default_space(layers, total_params: int, options=DEFAULT_OPTIONS) -> SearchSpace:
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"(layers?|h|blocks?)\.\d+\.",
                                                  "options": list(options)}]})
    return build_space(layers, cfg.rules(), (), total_params)


def minilm_worker(args) -> Worker:
    info = inspect_model(ModelConfig(name="minilm"))
    texts = tuple(load_texts(CalibrationConfig(samples=args.samples, seq_len=args.seq_len)))
    setup = WorkerSetup(info.path, info.kind, "embedding_distortion", texts, args.seq_len,
                        batch_size=args.batch_size, device=args.device, threads=args.threads)
    return Worker(setup, default_space(info.layers, info.total_params))


def llama_worker(args) -> Worker:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv, vocab = LLAMA[args.model]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=max(args.seq_len, 2048))
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {args.model}: {params / 1e9:.3f} B parameters, {dtype}, "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    g = torch.Generator(device=device).manual_seed(1)
    batches = []
    for start_row in range(0, args.samples, args.batch_size):
        rows = min(args.batch_size, args.samples - start_row)
        ids = torch.randint(vocab, (rows, args.seq_len), device=device, generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    options = LLAMA_8B_OPTIONS if args.model == "llama-8b" else DEFAULT_OPTIONS
    space = default_space(discover_layers(model), params, options)
    cap = 0 if args.model == "llama-8b" else args.cache_device_bytes
    setup = WorkerSetup(f"(random {args.model})", "causal-lm", "kl", (), args.seq_len,
                        batch_size=args.batch_size, dtype=str(dtype).removeprefix("torch."),
                        device=args.device, threads=args.threads, cache_device_bytes=cap,
                        kl_top_k=args.kl_top_k)
    return Worker(setup, space, model=model, batches=batches)


def random_candidate(space: SearchSpace, rng: random.Random) -> Candidate:
    return Candidate(tuple(rng.randrange(k) for k in space.sizes))


def two_gene_step(space: SearchSpace, c: Candidate, rng: random.Random) -> Candidate:
    choices = list(c.choices)
    for g in rng.sample(range(len(choices)), 2):
        choices[g] = rng.choice([i for i in range(space.sizes[g]) if i != choices[g]])
    return Candidate(tuple(choices))


def naive_quantize_(worker: Worker, candidate: Candidate) -> None:
    """What a worker without a cache does: quantize every searched Linear from scratch (RTN)."""
    for name, option in worker.space.decode(candidate).items():
        set_weight_(worker.modules[name], quantize_weight(worker.original[name], option))
        worker.current[name] = None  # the cache no longer describes these layers


def median_ms(xs: list[float]) -> str:
    return f"{1000 * statistics.median(xs):8.1f} ms"


def throughput(args) -> None:
    device = torch.device(args.device)
    start = time.perf_counter()
    worker = minilm_worker(args) if args.model == "minilm" else llama_worker(args)
    tokens = sum(int(b["attention_mask"].sum()) for b in worker.batches)
    print(f"worker ready in {time.perf_counter() - start:.1f} s: {len(worker.space.layers)} "
          f"searched layers, {len(worker.space.genes)} genes × "
          f"{len(worker.space.genes[0].options)} options, {worker.samples} samples, "
          f"{tokens} tokens", flush=True)
    start = time.perf_counter()
    worker.warm_cache()
    sync(device)
    split = worker.cache_split()
    print(f"variant cache warm in {time.perf_counter() - start:.1f} s: "
          f"{split['device'] / 1e9:.2f} GB on {device.type}, {split['host'] / 1e9:.2f} GB host",
          flush=True)

    rng = random.Random(0)
    c = random_candidate(worker.space, rng)
    for _ in range(2):  # warm-up (kernels, allocator)
        worker.evaluate(c)
        worker.evaluate(random_candidate(worker.space, rng))
    base, rand, step, apply_rand, naive_q, naive_total = [], [], [], [], [], []
    for _ in range(args.evals):
        base.append(timed(worker.measure, device))
        c = random_candidate(worker.space, rng)
        rand.append(timed(lambda c=c: worker.evaluate(c), device))
        c2 = two_gene_step(worker.space, c, rng)
        step.append(timed(lambda c2=c2: worker.evaluate(c2), device))
        c3 = random_candidate(worker.space, rng)
        apply_rand.append(timed(lambda c3=c3: worker.apply_(c3), device))
    for _ in range(max(args.evals // 4, 2)):
        c = random_candidate(worker.space, rng)
        q = timed(lambda c=c: naive_quantize_(worker, c), device)
        naive_q.append(q)
        naive_total.append(q + timed(worker.measure, device))
    # the swapped (and, for llama-8b, asynchronously copied) weights are the quantized ones
    c = random_candidate(worker.space, rng)
    cached = worker.evaluate(c).objective
    naive_quantize_(worker, c)
    naive = worker.measure()[0]
    worker.restore_()

    f = statistics.median(base)
    print(f"\n{args.model} on {describe(device)}, {args.evals} timed evaluations each")
    print(f"  forward+objective        {median_ms(base)}")
    print(f"  evaluate (random)        {median_ms(rand)}   ratio {statistics.median(rand) / f:.3f}")
    print(f"  evaluate (2 genes)       {median_ms(step)}   ratio {statistics.median(step) / f:.3f}")
    print(f"  apply_ (random, alone)   {median_ms(apply_rand)}")
    print(f"  naive re-quantize all    {median_ms(naive_q)}")
    print(f"  naive + forward+obj      {median_ms(naive_total)}   ratio "
          f"{statistics.median(naive_total) / f:.3f}")
    print(f"  check: cached {cached:.6g} vs re-quantized {naive:.6g} (rel. diff "
          f"{abs(cached - naive) / max(abs(naive), 1e-30):.1e})")
    split = worker.cache_split()
    print(f"  cache bytes: device {split['device'] / 1e9:.2f} GB, host {split['host'] / 1e9:.2f} GB",
          flush=True)
    if args.gptq_levels:
        gptq_levels(worker, args.gptq_levels.split(","), device)


def gptq_levels(worker: Worker, labels: list[str], device: torch.device) -> None:
    """Time GPTQ on every searched layer (one Hessian pass, then each level), and score the
    uniform GPTQ level against its RTN counterpart."""
    first = worker.space.layers[0].name
    print(f"\nGPTQ, {len(worker.space.layers)} layers: Hessian pass "
          f"{timed(lambda: worker.hessian(first), device):.1f} s", flush=True)
    for label in labels:
        option = QuantOption.from_label(label)
        rtn = replace(option, rounding="rtn")
        seconds = timed(lambda o=option: [worker.variant(n, o) for n in worker.modules], device)
        scores = []
        for o in (rtn, option):
            for name in worker.modules:
                worker.set_layer_(name, o)
            scores.append(worker.score())
        worker.restore_()
        print(f"  {label:<24} {seconds:6.1f} s   objective {scores[1]:.6g} (RTN {scores[0]:.6g})",
              flush=True)


def gptq_vs_rtn(args) -> None:
    """Uniform RTN and GPTQ levels of MiniLM: objective on the calibration texts (GPTQ's Hessians
    come from them) and on held-out texts (the next samples of the same source)."""
    info = inspect_model(ModelConfig(name="minilm"))
    labels = ("int3-g128-asym", "int3-g128-asym-gptq", "int4-g128-asym", "int4-g128-asym-gptq",
              "int3-ch-sym", "int3-ch-sym-gptq", "int4-ch-sym", "int4-ch-sym-gptq")
    space = default_space(info.layers, info.total_params, labels)

    def make(offset: int) -> Worker:
        texts = tuple(load_texts(CalibrationConfig(samples=args.samples, seq_len=args.seq_len,
                                                   offset=offset)))
        setup = WorkerSetup(info.path, info.kind, "embedding_distortion", texts, args.seq_len,
                            batch_size=args.batch_size, threads=args.threads)
        return Worker(setup, space)

    calib, held = make(0), make(args.samples)
    start = time.perf_counter()
    calib.warm_cache()
    print(f"all levels of {len(space.layers)} layers in {time.perf_counter() - start:.1f} s "
          f"(one Hessian pass, {args.samples} samples × {args.seq_len} tokens)")
    for key in calib.cache:  # held-out scoring of the levels fitted on the calibration set
        held.cache.put(key, calib.cache.get(key))
    print(f"\n{'level':<22}{'calibration':>14}{'held-out':>14}")
    for option in space.uniform_options():
        c = space.uniform(option)
        print(f"{option.label:<22}{calib.evaluate(c).objective:>14.6f}"
              f"{held.evaluate(c).objective:>14.6f}")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", choices=["minilm", *LLAMA])
    p.add_argument("--device", default="cpu")
    p.add_argument("--evals", type=int, default=10, help="timed evaluations of each kind")
    p.add_argument("--samples", type=int, help="calibration samples (MiniLM 32, Llama 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sample (MiniLM 64, Llama 2048)")
    p.add_argument("--batch-size", type=int, help="samples per forward (MiniLM 32, Llama 8/2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the worker's default)")
    p.add_argument("--cache-device-bytes", type=int, default=None)
    p.add_argument("--kl-top-k", type=int, default=None)
    p.add_argument("--gptq-vs-rtn", action="store_true")
    p.add_argument("--gptq-levels", default="", help="comma-separated GPTQ labels to time after "
                   "the throughput figures, e.g. int4-g128-asym-gptq")
    args = p.parse_args()
    llama = args.model.startswith("llama")
    args.samples = args.samples or (8 if llama else 32)
    args.seq_len = args.seq_len or (2048 if llama else 64)
    args.batch_size = args.batch_size or (2 if args.model == "llama-8b" else 8 if llama else 32)
    print(f"torch {torch.__version__}, model {args.model}, device {args.device}", flush=True)
    if args.gptq_vs_rtn:
        gptq_vs_rtn(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
