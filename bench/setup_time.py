"""How long a Llama-8B-shaped study takes to set up before it searches (issue 14), in one run.

    python bench/setup_time.py --device cuda --model llama-8b --out results/   # one H200
    python bench/setup_time.py                                               # CPU, llama-tiny

The model is built from a config with random weights on the device (nothing that big is
downloaded or carried), saved beside the run with a tokenizer trained on the standard-library
corpus (so nothing but the project is needed), and scored with next-token
KL on a calibration file of ``--samples`` lines of ``--seq-len`` tokens (standard-library prose).
The space is the issue's: q/k/v and gate/up tied within each block, options
int3-g128-asym-gptq, int4-g128-asym-gptq, int4-g128-asym, int8-g128-asym, fp16, searched by the
hybrid with ``proxy: true`` at 4.25 bits. Figures (all printed and written to
``<out>/setup_time.json``):

- *in process*: the worker's full-precision reference, the Hessian pass, one GPTQ level over
  every searched layer (batched, :mod:`mpsearch.workers.level_build`) and the same level checked
  against the per-layer reference path on one layer of each shape;
- *through the CLI* (``mpsearch run`` in a subprocess, one worker on the device): the time from
  the command to the first completed evaluation of a new study, with each setup phase's line,
  then the same for a second study on the same model and calibration (the level database
  reused);
- last, the evaluation ratio (evaluation / plain forward + KL on the same tokens) with every
  variant spilled to pinned host memory, for random candidates and two-gene moves (as
  bench/worker_throughput.py), on a worker over the same model that reads the GPTQ levels from
  the CLI studies' level database (decoded from its codes) and computes the RTN ones.

The results file is rewritten (atomically) after every step, so a run cut short keeps every
figure it reached; a CLI study past ``--cli-timeout`` is stopped with SIGINT (the CLI's clean
stop: its workers finish writing the level database) before it is killed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.workers.calibration import load_texts, stdlib_texts
from mpsearch.workers.config import CalibrationConfig
from mpsearch.workers.layers import discover_layers
from mpsearch.workers.level_build import build_task_, plan_tasks
from mpsearch.workers.model_loading import load_tokenizer
from mpsearch.workers.worker import Worker, WorkerSetup

sys.path.insert(0, str(Path(__file__).parent))
from worker_throughput import sync, timed  # noqa: E402  (a sibling script, not a package)

LLAMA = {  # name: (hidden, layers, intermediate, heads, kv heads, vocab)
    "llama-8b": (4096, 32, 14336, 32, 8, 128256),
    "llama-tiny": (256, 2, 768, 8, 2, 4000),
}
OPTIONS = ["int3-g128-asym-gptq", "int4-g128-asym-gptq", "int4-g128-asym", "int8-g128-asym",
           "fp16"]
TIES = [r"layers\.(\d+)\.self_attn\.(?:q|k|v)_proj", r"layers\.(\d+)\.mlp\.(?:gate|up)_proj"]
MATCH = r"layers\.\d+\."
TIMED_LEVEL = "int4-g128-asym-gptq"


def log(msg: str, results: dict[str, Any], out: Path) -> None:
    print(msg, flush=True)
    target = out / "setup_time.json"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, target)  # whole or not at all, whenever the run is cut


# -- the model and its calibration file -------------------------------------------------------
def build_model(args, work: Path) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv, vocab = LLAMA[args.model]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=max(args.seq_len, 2048), pad_token_id=0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(work / "model")
    save_tokenizer(work / "model", min(vocab, 32000))
    return model


def save_tokenizer(folder: Path, vocab: int) -> None:
    """A word-piece tokenizer trained on the standard-library corpus (no download, no package:
    the GPU machine has neither), saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(stdlib_texts(), trainers.WordPieceTrainer(
        vocab_size=vocab, special_tokens=["[PAD]", "[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]"
                            ).save_pretrained(folder)


def write_calibration(path: Path, tokenizer, samples: int, seq_len: int) -> None:
    """``samples`` lines of standard-library prose, each at least ``seq_len`` tokens long."""
    texts, lines, i = list(stdlib_texts()), [], 0
    for _ in range(samples):
        line: list[str] = []
        while len(tokenizer(" ".join(line))["input_ids"]) < seq_len + 8:
            line.append(texts[i % len(texts)])
            i += 1
        lines.append(" ".join(line))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def spec_for(args, work: Path, study: str) -> dict[str, Any]:
    return {
        "study": study,
        "model": {"name": str(work / "model"), "dtype": "bfloat16" if args.device == "cuda"
                  else "float32", "device": args.device},
        "calibration": {"source": str(work / "calib.txt"), "samples": args.samples,
                        "seq_len": args.seq_len, "batch_size": args.samples},
        "space": {"layers": [{"match": MATCH, "options": OPTIONS}], "tie": TIES},
        "budget": {"avg_bits": 4.25},
        "searcher": {"name": "hybrid", "params": {"proxy": True}},
        "evaluations": args.evaluations,
        "workers": {"count": 1, "gpus": 1 if args.device == "cuda" else 0,
                    "cpus": args.cpus},
        "storage": {"url": f"sqlite:///{work / 'store.db'}"},
    }


def space_of(layers, total_params: int) -> SearchSpace:
    cfg = SpaceConfig.model_validate({"layers": [{"match": MATCH, "options": OPTIONS}],
                                      "tie": TIES})
    return build_space(layers, cfg.rules(), cfg.tie, total_params)


# -- in process -------------------------------------------------------------------------------
def per_layer_check(worker: Worker, option: QuantOption) -> dict[str, Any]:
    """The batched level against the per-layer reference path, one layer of each shape."""
    seen, out = set(), {}
    for name, w in worker.original.items():
        if tuple(w.shape) in seen:
            continue
        seen.add(tuple(w.shape))
        start = time.perf_counter()
        alone = worker._compress(name, option).float()
        seconds = time.perf_counter() - start
        batched = worker.cache.get((name, option)).to(alone.device).float()
        scale = alone.abs().max().item()
        diff = (alone - batched).abs()
        out[name] = {"shape": list(w.shape), "per_layer_s": round(seconds, 2),
                     "max_abs_diff": diff.max().item(), "max_weight": scale,
                     "differing_fraction": (diff > 0).float().mean().item()}
    return out


def ratio(worker: Worker, device: torch.device, evals: int) -> dict[str, float]:
    def random_candidate(rng) -> Candidate:
        return Candidate(tuple(rng.randrange(k) for k in worker.space.sizes))

    def two_gene(c: Candidate, rng) -> Candidate:
        choices = list(c.choices)
        for g in rng.sample(range(len(choices)), 2):
            choices[g] = rng.choice([i for i in range(worker.space.sizes[g]) if i != choices[g]])
        return Candidate(tuple(choices))

    rng = random.Random(0)
    for _ in range(2):
        worker.evaluate(random_candidate(rng))
    base, rand, step = [], [], []
    for _ in range(evals):
        base.append(timed(worker.measure, device))
        c = random_candidate(rng)
        rand.append(timed(lambda c=c: worker.evaluate(c), device))
        c2 = two_gene(c, rng)
        step.append(timed(lambda c2=c2: worker.evaluate(c2), device))
    f = statistics.median(base)
    return {"forward_kl_ms": 1000 * f, "random_ms": 1000 * statistics.median(rand),
            "two_gene_ms": 1000 * statistics.median(step),
            "ratio_random": statistics.median(rand) / f,
            "ratio_two_gene": statistics.median(step) / f}


def in_process(args, model: torch.nn.Module, work: Path, results: dict, out: Path) -> None:
    device = torch.device(args.device)
    space = space_of(discover_layers(model), sum(p.numel() for p in model.parameters()))
    setup = replace(worker_setup(args, work), proxies=True,
                    # the timed GPTQ level (14 GB for 8B) stays on the GPU
                    cache_device_bytes=40 << 30 if args.device == "cuda" else None)
    r = results["in_process"] = {}
    start = time.perf_counter()
    worker = Worker(setup, space, model=model)
    sync(device)
    r["reference_s"] = time.perf_counter() - start
    r["tokens"] = sum(int(b["attention_mask"].sum()) for b in worker.batches)
    r["layers"] = len(space.layers)
    r["genes"] = len(space.genes)
    log(f"worker ready (reference) in {r['reference_s']:.1f} s: {r['layers']} layers, "
        f"{r['genes']} genes, {r['tokens']} tokens", results, out)
    r["hessians_s"] = timed(worker.gather_statistics, device)
    r["distinct_hessians"] = len({id(worker.hessian(n)) for n in worker.modules})
    log(f"Hessian pass {r['hessians_s']:.1f} s ({r['distinct_hessians']} distinct Hessians)",
        results, out)
    shapes = {n: tuple(w.shape) for n, w in worker.original.items()}
    option = QuantOption.from_label(TIMED_LEVEL)
    tasks = plan_tasks([(n, option) for n in worker.modules], shapes, 1)[0]
    seconds = timed(lambda w=worker: [build_task_(w, t) for t in tasks], device)
    r[f"level_{TIMED_LEVEL}_s"] = seconds
    log(f"GPTQ level {TIMED_LEVEL}, {len(worker.modules)} layers batched (factors included): "
        f"{seconds:.2f} s", results, out)
    from mpsearch.workers.gptq_batch import CAPTURES

    r["cuda_graph_captures"] = dict(CAPTURES)  # "eager": a capture refused or not bitwise equal
    r["per_layer_check"] = per_layer_check(worker, option)
    log(f"  batched vs per layer: {json.dumps(r['per_layer_check'])}", results, out)
    del worker


def worker_setup(args, work: Path) -> WorkerSetup:
    texts = tuple(load_texts(CalibrationConfig(source=str(work / "calib.txt"),
                                               samples=args.samples, seq_len=args.seq_len)))
    return WorkerSetup(str(work / "model"), "causal-lm", "kl", texts, args.seq_len,
                       batch_size=args.samples, dtype="bfloat16" if args.device == "cuda"
                       else "float32", device=args.device, threads=args.cpus)


def spilled_ratio(args, work: Path, results: dict, out: Path) -> None:
    """The evaluation ratio with every variant in pinned host memory, on a worker that loads the
    saved model (the benchmark must not hold 16 GB of the GPU while the CLI's worker builds its
    levels) and reads the GPTQ levels from the CLI studies' level database."""
    device = torch.device(args.device)
    root = work / "store.db.levels"
    sets = [p for p in root.iterdir() if (p / "manifest.json").is_file()] if root.is_dir() else []
    setup = replace(worker_setup(args, work), level_db=str(sets[0]) if sets else None,
                    cache_device_bytes=0)  # every variant in (pinned) host memory
    r = results.setdefault("spilled", {})
    start = time.perf_counter()
    from mpsearch.workers.config import ModelConfig
    from mpsearch.workers.model_loading import inspect_model

    info = inspect_model(ModelConfig(name=str(work / "model")))
    worker = Worker(setup, space_of(info.layers, info.total_params))
    sync(device)
    r["load_and_reference_s"] = time.perf_counter() - start
    start = time.perf_counter()
    worker.warm_cache()  # GPTQ decoded from the database, RTN computed, all to the host
    sync(device)
    r["warm_to_host_s"] = time.perf_counter() - start
    r["gptq_from_database"] = not worker.computed
    split = worker.cache_split()
    r["cache_host_gb"], r["cache_device_gb"] = split["host"] / 1e9, split["device"] / 1e9
    log(f"variants spilled to host: {r['cache_host_gb']:.1f} GB host, "
        f"{r['cache_device_gb']:.1f} GB device (slots), {r['warm_to_host_s']:.1f} s (GPTQ from "
        f"the database: {r['gptq_from_database']})", results, out)
    r["ratio"] = ratio(worker, device, args.evals)
    log(f"evaluation ratio (spilled): {json.dumps(r['ratio'])}", results, out)


# -- through the CLI --------------------------------------------------------------------------
def cli_study(args, work: Path, study: str, results: dict, out: Path) -> None:
    spec_path = work / f"{study}.yaml"
    spec_path.write_text(yaml.safe_dump(spec_for(args, work, study)))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MPSEARCH_DB")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mpsearch.cluster.cli", "run", str(spec_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=work)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(f"{time.perf_counter() - start:7.1f} s  {line.rstrip()}")
            print(f"  [{study}] {lines[-1]}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    store, first = None, None
    while proc.poll() is None and time.perf_counter() - start < args.cli_timeout:
        time.sleep(0.25)
        if first is not None:
            continue
        try:
            store = store or TrialStore(f"sqlite:///{work / 'store.db'}", create=False)
            if any(t.status == COMPLETE for t in store.trials(study)):
                first = time.perf_counter() - start
                print(f"  [{study}] first completed evaluation after {first:.1f} s", flush=True)
        except Exception:  # noqa: BLE001 - the study or the file does not exist yet
            store = None
    if proc.poll() is None:  # the CLI's clean stop first: its workers finish their writes
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    reader.join(timeout=5)
    total = time.perf_counter() - start
    results.setdefault("cli", {})[study] = {
        "first_evaluation_s": first, "total_s": total, "returncode": proc.returncode,
        "output": lines[-60:]}
    log(f"CLI study {study}: first evaluation {first} s, done in {total:.1f} s "
        f"(exit {proc.returncode})", results, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-tiny", choices=list(LLAMA))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--evaluations", type=int, default=3, help="of each CLI study")
    p.add_argument("--evals", type=int, default=5, help="timed evaluations of each kind")
    p.add_argument("--cpus", type=int, default=4, help="CPU threads of the worker")
    p.add_argument("--work", default=None, help="folder for the model, spec and store "
                   "(default: a fresh one under /tmp)")
    p.add_argument("--out", default=".", help="where setup_time.json goes")
    p.add_argument("--cli-timeout", type=float, default=400.0)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: inprocess, ratio "
                   "(the spilled evaluation ratio), cli; with inprocess skipped, the model, "
                   "calibration file and level database already in --work are reused (a run "
                   "split over two device calls)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or f"/tmp/setup-time-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model": args.model, "device": args.device,
                               "gpu": torch.cuda.get_device_name() if args.device == "cuda"
                               else None, "samples": args.samples, "seq_len": args.seq_len,
                               "torch": torch.__version__}
    if "inprocess" not in skip or not (work / "model" / "config.json").is_file():
        start = time.perf_counter()
        model = build_model(args, work)
        results["build_and_save_s"] = time.perf_counter() - start
        write_calibration(work / "calib.txt", load_tokenizer(str(work / "model")), args.samples,
                          args.seq_len)
        log(f"built and saved {args.model} in {results['build_and_save_s']:.1f} s", results, out)
        if "inprocess" not in skip:
            in_process(args, model, work, results, out)
        del model  # the CLI's worker needs the whole GPU (its build peaks near 120 GB for 8B)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if "cli" not in skip:
        cli_study(args, work, "first", results, out)
        cli_study(args, work, "second", results, out)
    if "ratio" not in skip:
        spilled_ratio(args, work, results, out)
    log(json.dumps({k: v for k, v in results.items() if k != "cli"}, indent=1), results, out)


if __name__ == "__main__":
    main()
