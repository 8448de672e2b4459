"""The latency table of a Llama-8B-shaped model on one GPU, and how well it predicts a forward pass.

    python bench/serving_budgets.py --device cuda --model llama-8b --out results/   # one H200
    python bench/serving_budgets.py --skip cli                                    # CPU smoke

The model is built from a config with random weights on the device (nothing is downloaded); its
searched layers are every Linear of the decoder blocks (q/k/v/o, gate/up/down: four distinct
shapes for Llama-8B). Figures (printed, and written to ``<out>/serving_budgets.json``):

- *the table*: every (distinct shape × kernel) GEMM at batch 1, 8 and 64 (one new token per
  sequence), measured by :func:`mpsearch.workers.latency.measure_entries` (CUDA graph of calls
  cycling over weight copies larger than twice the L2 cache, CUDA events per replay, warm-up,
  then ``--repeats`` timed replays: median, p10/p90, min/max), stored in a SQLite store under the
  device's key and read back (``storage/latency.py``), and the rest of the forward pass at each
  batch (searched layers taken out);
- *the prediction*: ``--candidates`` random candidates (a kernel drawn per gene, q/k/v and
  gate/up tied as vLLM fuses them) plus the uniform ones, each predicted as Σ entries + rest
  (:meth:`~mpsearch.spaces.latency.LatencyTable.forward_ms`) and measured end to end (the model's
  forward with every searched layer running its kernel, timed as the rest is); the error of each,
  and its mean and maximum per batch;
- *a search through the CLI* (``mpsearch run`` in a subprocess, one worker on the device): the
  issue's options (RTN int4 in place of GPTQ: no level database to build in the time) with q/k/v
  and gate/up tied, under ``budget.memory`` at ``--context`` tokens × ``--memory-batch`` (bytes
  a ``--memory-fraction`` of the way from the space's least to its most) and ``budget.latency``
  at batch 8 × 1 token (the table measured by the workers in the run's latency phase): the best
  trial's memory and latency by the cost model against the budgets, and whether any proposed
  trial exceeds either.

The kernels are the issue's options' (``int4-g128-asym-gptq`` times as ``int4-g128-asym``: GPTQ
changes the integers, not the kernel): bf16 matmul, tinygemm int4, dequantize + matmul for
int8-g128 (no grouped int8 weight-only kernel in torch), ``torch._int_mm`` W8A8-int8 and
``torch._scaled_mm`` W8A8-FP8.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mpsearch.spaces.latency import GemmPoint, LatencyTable
from mpsearch.storage import TrialStore
from mpsearch.storage.latency import (
    LatencyKey,
    RestRecord,
    latency_table,
    layers_fingerprint,
    save_entries,
    save_rest,
)
from mpsearch.workers.kernels import make_kernel
from mpsearch.workers.latency import (
    KernelLinear,
    device_key,
    measure_entries,
    rest_timing,
    swapped,
    time_forward,
)
from mpsearch.workers.layers import discover_layers

LLAMA = {  # name: (hidden, layers, intermediate, heads, kv heads, vocab)
    "llama-8b": (4096, 32, 14336, 32, 8, 128256),
    "llama-tiny": (256, 2, 768, 8, 2, 4000),
}
KERNELS = ["fp16", "int4-g128-asym", "int8-g128-asym", "w8a8-int8", "w8a8-fp8"]
SEARCHED = re.compile(r"layers\.\d+\.")
TIES = [re.compile(r"layers\.(\d+)\.self_attn\.(?:q|k|v)_proj"),
        re.compile(r"layers\.(\d+)\.mlp\.(?:gate|up)_proj")]


def log(msg: str, results: dict[str, Any], out: Path) -> None:
    print(msg, flush=True)
    (out / "serving_budgets.json").write_text(json.dumps(results, indent=1))


def build_model(args) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv, vocab = LLAMA[args.model]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(args.dtype)
    try:
        with torch.device(args.device):
            return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def genes_of(names: list[str]) -> list[list[str]]:
    """Searched layers grouped as the bench ties them (q/k/v, gate/up within a block)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = name
        for tie in TIES:
            if (m := tie.search(name)) is not None:
                key = f"{tie.pattern}{m.groups()}"
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def measure_table(args, model, shapes: dict[str, tuple[int, int]], store: TrialStore,
                  results: dict[str, Any], out: Path) -> dict[int, LatencyTable]:
    device = torch.device(args.device)
    key = device_key(device)
    dkey = LatencyKey(key.name, key.versions, str(args.dtype).removeprefix("torch."))
    results["device"] = {"name": key.name, "versions": key.versions, "dtype": dkey.dtype}
    if device.type == "cuda":
        results["device"]["l2_bytes"] = torch.cuda.get_device_properties(device).L2_cache_size
    points = sorted({GemmPoint(o, i, k) for o, i in shapes.values() for k in KERNELS})
    fp = layers_fingerprint(_layer_infos(shapes))
    tables, rows = {}, []
    for batch in args.batches:
        start = time.perf_counter()
        entries = measure_entries(points, batch, args.tokens, device, args.dtype,
                                  args.warmup, args.repeats)
        save_entries(store, dkey, entries, worker="bench")
        rest = rest_timing(model, {n: o for n, (o, _) in shapes.items()}, batch, args.tokens,
                           device, args.warmup, args.repeats)
        save_rest(store, dkey, "(random " + args.model + ")", fp, batch, args.tokens,
                  RestRecord(rest.ms, rest.p10, rest.p90, rest.repeats), worker="bench")
        table = latency_table(store, dkey, "(random " + args.model + ")", _layer_infos(shapes),
                              batch, args.tokens)
        assert table is not None and not [p for p in points if p not in table.entries]
        tables[batch] = table
        for e in entries:
            rows.append({"out": e.point.out_features, "in": e.point.in_features,
                         "kernel": e.point.kernel, "batch": batch, "tokens": args.tokens,
                         "ms": e.ms, "p10": e.timing.p10, "p90": e.timing.p90,
                         "min": e.timing.min_ms, "max": e.timing.max_ms,
                         "repeats": e.timing.repeats, "cuda_graph": e.timing.graph,
                         "spread_pct": 100 * (e.timing.p90 - e.timing.p10) / e.ms,
                         "fast": e.fast, "runs_as": e.runs_as})
        results.setdefault("rest", []).append({
            "batch": batch, "tokens": args.tokens, "ms": rest.ms, "p10": rest.p10,
            "p90": rest.p90, "repeats": rest.repeats, "cuda_graph": rest.graph})
        results["table"] = rows
        log(f"batch {batch}: {len(entries)} entries in {time.perf_counter() - start:.1f} s, rest "
            f"{rest.ms:.4f} ms (p10 {rest.p10:.4f}, p90 {rest.p90:.4f}, graph {rest.graph})",
            results, out)
        for line in table.describe_entries(points):
            print("  " + line)
    return tables


def _layer_infos(shapes: dict[str, tuple[int, int]]):
    from mpsearch.spaces.space import LayerInfo

    return [LayerInfo(n, i, o) for n, (o, i) in shapes.items()]


def predict_vs_measure(args, model, shapes: dict[str, tuple[int, int]],
                       tables: dict[int, LatencyTable], results: dict[str, Any], out: Path) -> None:
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(7)
    genes = genes_of(list(shapes))
    pool: dict[tuple[str, str], KernelLinear] = {}  # (layer, kernel) → its module, built once

    def module(name: str, kernel: str) -> KernelLinear:
        if (name, kernel) not in pool:
            o, i = shapes[name]
            pool[(name, kernel)] = KernelLinear(make_kernel(GemmPoint(o, i, kernel), device,
                                                            args.dtype, gen), i, o)
        return pool[(name, kernel)]

    rng = random.Random(args.seed)
    candidates = [("uniform " + k, [k] * len(genes)) for k in KERNELS]
    candidates += [(f"random {j}", [rng.choice(KERNELS) for _ in genes])
                   for j in range(args.candidates)]
    rows = []
    for label, choice in candidates:
        layer_kernel = {n: k for names, k in zip(genes, choice, strict=True) for n in names}
        modules = {n: module(n, k) for n, k in layer_kernel.items()}
        with swapped(model, modules):
            for batch in args.batches:
                table = tables[batch]
                predicted = table.forward_ms(GemmPoint(*shapes[n], k)
                                             for n, k in layer_kernel.items())
                t = time_forward(model, batch, args.tokens, device, args.warmup,
                                 args.forward_repeats)
                error = 100 * (predicted - t.ms) / t.ms
                counts = {k: choice.count(k) for k in KERNELS}
                rows.append({"candidate": label, "batch": batch, "predicted_ms": predicted,
                             "measured_ms": t.ms, "measured_p10": t.p10, "measured_p90": t.p90,
                             "error_pct": error, "cuda_graph": t.graph, "genes": counts})
                print(f"{label:>12} batch {batch:>3}: predicted {predicted:8.4f} ms, measured "
                      f"{t.ms:8.4f} ms ({error:+.2f} %)", flush=True)
        results["candidates"] = rows
        (out / "serving_budgets.json").write_text(json.dumps(results, indent=1))
        if device.type == "cuda" and torch.cuda.memory_allocated(device) > args.pool_bytes:
            pool.clear()  # keep the prepared kernels of the GPU inside the pool's cap
            torch.cuda.empty_cache()
    summary = {}
    for batch in args.batches:
        errs = [abs(r["error_pct"]) for r in rows if r["batch"] == batch
                and r["candidate"].startswith("random")]
        summary[str(batch)] = {"mean_abs_error_pct": statistics.mean(errs),
                               "max_abs_error_pct": max(errs), "candidates": len(errs)}
    results["prediction"] = summary
    log(f"prediction error by batch: {json.dumps(summary)}", results, out)


# -- a search under memory and latency budgets, through the CLI -------------------------------
CLI_OPTIONS = ["int4-g128-asym", "int8-g128-asym", "w8a8-int8", "w8a8-fp8", "fp16"]
CLI_TIES = [r"layers\.(\d+)\.self_attn\.(?:q|k|v)_proj", r"layers\.(\d+)\.mlp\.(?:gate|up)_proj"]


def cli_spec(args, work: Path, memory_bytes: float) -> dict[str, Any]:
    cuda = args.device == "cuda"
    return {
        "study": "serving", "model": {"name": str(work / "model"), "device": args.device,
                                      "dtype": "bfloat16" if cuda else "float32"},
        "calibration": {"source": str(work / "calib.txt"), "samples": args.samples,
                        "seq_len": args.seq_len, "batch_size": args.samples},
        "space": {"layers": [{"match": SEARCHED.pattern, "options": CLI_OPTIONS}],
                  "tie": CLI_TIES},
        "budget": {"memory": {"bytes": memory_bytes, "context": args.context,
                              "batch": args.memory_batch},
                   "latency": {"ms": args.latency_ms, "batch": 8, "tokens": 1}},
        "searcher": {"name": "evolutionary", "params": {"offspring": 8}},
        "evaluations": args.evaluations,
        "workers": {"count": 1, "gpus": 1 if cuda else 0, "cpus": args.cpus},
        "levels": {"enabled": False},
        "storage": {"url": f"sqlite:///{work / 'store.db'}"},
    }


def cli_search(args, model, results: dict[str, Any], out: Path) -> None:
    """``mpsearch run`` of a study under budget.memory at ``--context`` and budget.latency."""
    sys.path.insert(0, str(Path(__file__).parent))
    from setup_time import save_tokenizer, write_calibration  # a sibling script

    from mpsearch.cluster.job import prepare
    from mpsearch.cluster.spec import parse_spec
    from mpsearch.workers.model_loading import load_tokenizer

    work = Path(args.work or f"/tmp/serving-budgets-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(work / "model")
    save_tokenizer(work / "model", min(int(model.config.vocab_size), 32000))
    write_calibration(work / "calib.txt", load_tokenizer(str(work / "model")), args.samples,
                      args.seq_len)
    del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    saved = time.perf_counter() - start
    # the memory budget at a fraction of the way from the least to the most this space can cost
    probe = prepare(parse_spec(cli_spec(args, work, 1e15)))
    (row,) = [r for r in probe.space.constraints(probe.budget) if r.name == "memory"]
    least, most = row.least(), row.value_of(sum(max(c) for c in row.costs))
    memory = float(round(least + args.memory_fraction * (most - least)))
    spec_path = work / "serving.yaml"
    spec_path.write_text(yaml.safe_dump(cli_spec(args, work, memory)))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MPSEARCH_DB")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", "run", str(spec_path)],
                          capture_output=True, text=True, env=env, cwd=work,
                          timeout=args.cli_timeout)
    seconds = time.perf_counter() - start
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    print("\n".join(lines[-40:]), flush=True)
    part: dict[str, Any] = {"save_s": saved, "run_s": seconds, "returncode": proc.returncode,
                            "spec": cli_spec(args, work, memory), "output": lines[-40:],
                            "memory_least": least, "memory_most": most}
    results["cli"] = part
    log(f"mpsearch run: exit {proc.returncode} in {seconds:.1f} s", results, out)
    if proc.returncode != 0:
        return
    job = prepare(parse_spec(cli_spec(args, work, memory)))
    store = TrialStore(f"sqlite:///{work / 'store.db'}", create=False)
    (key,) = [k for k in _stored_keys(store)]
    table = latency_table(store, key, job.model.path, job.space.layers, 8, 1)
    assert table is not None
    rows = {r.name: r for r in job.space.constraints(job.budget)}
    trials = [t for t in store.trials("serving") if t.status == "complete"]
    best = store.best("serving", top=1)[0]
    by_model = {"memory_bytes": rows["memory"].value(best.candidate.choices),
                "latency_ms": table.candidate_ms(job.space, best.candidate)}
    part.update({
        "table_key": {"device": key.device, "versions": key.versions, "dtype": key.dtype},
        "rest_ms": table.rest_ms, "trials": len(trials),
        "feasible": sum(t.feasible for t in trials),
        "proposed_over_budget": sum(1 for t in trials if t.origin != "uniform" and not (
            rows["memory"].admits(t.candidate.choices)
            and table.candidate_ms(job.space, t.candidate) <= args.latency_ms + 1e-9)),
        "best": {"trial": best.number, "objective": best.objective, "avg_bits": best.avg_bits,
                 "layers": job.space.summarize(best.candidate), **by_model,
                 "memory_budget": memory, "memory_slack_bytes": memory - by_model["memory_bytes"],
                 "latency_budget_ms": args.latency_ms}})
    log(f"best trial {best.number}: memory {by_model['memory_bytes']:,.0f} of {memory:,.0f} "
        f"bytes, latency {by_model['latency_ms']:.3f} of {args.latency_ms} ms by the table",
        results, out)


def _stored_keys(store: TrialStore):
    from mpsearch.storage.latency import stored_devices

    return stored_devices(store)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=sorted(LLAMA), default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--forward-repeats", type=int, default=30)
    ap.add_argument("--pool-bytes", type=float, default=90e9, help="GPU bytes of prepared kernels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--skip", default="", help="comma-separated: table (and the prediction), cli")
    ap.add_argument("--samples", type=int, default=8, help="calibration samples of the CLI study")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--evaluations", type=int, default=24)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--context", type=int, default=32768, help="budget.memory's context")
    ap.add_argument("--memory-batch", type=int, default=4, help="budget.memory's batch")
    ap.add_argument("--memory-fraction", type=float, default=0.3,
                    help="budget.memory between the space's least (0) and most (1) bytes")
    ap.add_argument("--latency-ms", type=float, default=None,
                    help="budget.latency at batch 8 (default: 10 on a GPU, none binding on CPU)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--cli-timeout", type=float, default=400.0)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.model = args.model or ("llama-8b" if cuda else "llama-tiny")
    args.dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    results: dict[str, Any] = {"model": args.model, "transformers": transformers.__version__,
                               "args": {k: v for k, v in vars(args).items() if k != "dtype"}}
    start = time.perf_counter()
    model = build_model(args)
    shapes = {ly.name: (ly.out_features, ly.in_features) for ly in discover_layers(model)
              if SEARCHED.search(ly.name)}
    log(f"built {args.model} in {time.perf_counter() - start:.1f} s: {len(shapes)} searched "
        f"layers, {len(set(shapes.values()))} distinct shapes", results, out)
    (out / "serving_budgets.db").unlink(missing_ok=True)  # every run measures its own table
    store = TrialStore(f"sqlite:///{out / 'serving_budgets.db'}")
    skip = set(filter(None, args.skip.split(",")))
    if "table" not in skip:
        tables = measure_table(args, model, shapes, store, results, out)
        predict_vs_measure(args, model, shapes, tables, results, out)
    if "cli" not in skip:
        if args.latency_ms is None:
            args.latency_ms = 10.0 if cuda else 1e6
        cli_search(args, model, results, out)
    results["seconds"] = time.perf_counter() - start
    log(f"done in {results['seconds']:.1f} s", results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
