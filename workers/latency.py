"""Measuring the latency table on a worker's device: GEMM times, the rest of a forward pass.

What is measured, exactly (``docs/latency.md`` has the same with the H200 figures):

- **One entry** (:func:`measure_entries`): the kernel of a (shape, option) from
  :mod:`.kernels` on an input of ``batch × tokens`` rows of the model's dtype. On a GPU the
  weights are held in as many copies as make one pass over them read at least twice the L2
  cache (so every call streams its weights from memory, as in a forward pass, where a layer's
  weights are never in cache), and one run is a CUDA graph of at least :data:`MIN_CALLS` calls
  cycling over the copies (no launch gaps: what a graph-captured decode step, vLLM's,
  executes), timed by a pair of CUDA events around each replay; runs are queued back to back
  (the device stays busy, as in serving). ``warmup`` runs first (three eager passes before
  capture, then ``warmup`` replays), then ``repeats`` timed runs; the entry is the median per
  call, its spread the 10th/90th percentiles, minimum and maximum. On a CPU one run is one call
  timed by ``time.perf_counter``.
- **The rest** (:func:`rest_timing`): the model's own forward pass of ``batch`` sequences of
  ``tokens`` new tokens (no KV cache, so no attention over a context) with every searched layer
  replaced by a module that returns zeros of its output shape (a memset, no GEMM), timed the same
  way with one forward per run. The GEMMs of unsearched layers (the LM head) stay in it.
- **A candidate's forward** (:func:`time_forward`, layers swapped for :class:`KernelLinear`): the same forward
  with every searched layer running its option's kernel; the latency budget predicts it as the
  sum of the entries plus the rest (:class:`~mpsearch.spaces.latency.LatencyTable`), and
  ``bench/serving_budgets.py`` checks the prediction against this measurement.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpsearch.spaces.latency import GemmPoint, LatencyEntry, Timing

from .kernels import PreparedKernel, make_kernel

# calls per timed run on a GPU: a run of the smallest GEMM still spans tens of microseconds (a
# CPU's clock resolves one call)
MIN_CALLS = 8
MAX_COPIES = 16
WARMUP, REPEATS = 10, 50


@dataclass(frozen=True)
class DeviceKey:
    """Where a table was measured: the device's name and the libraries its kernels come from."""

    name: str
    versions: str


def device_key(device: torch.device) -> DeviceKey:
    """The key a table measured on ``device`` is stored under (``storage/latency.py``)."""
    versions = f"torch {torch.__version__}"
    if device.type == "cuda":
        versions += f", cuda {torch.version.cuda}"
        return DeviceKey(torch.cuda.get_device_name(device), versions)
    versions += f", {torch.backends.cpu.get_cpu_capability()}"
    return DeviceKey(f"cpu {_cpu_name()} ({torch.get_num_threads()} threads)", versions)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _summary(per_call: list[float], graph: bool) -> Timing:
    deciles = statistics.quantiles(per_call, n=10, method="inclusive")
    return Timing(statistics.median(per_call), deciles[0], deciles[-1], min(per_call),
                  max(per_call), len(per_call), graph)


@torch.no_grad()
def time_calls(calls: Sequence[Callable[[], Any]], device: torch.device, warmup: int = WARMUP,
               repeats: int = REPEATS) -> Timing:
    """Time one run of ``calls`` (see the module docstring), per call."""
    if device.type != "cuda":
        for _ in range(max(warmup, 1)):
            for call in calls:
                call()
        per_call = []
        for _ in range(repeats):
            start = time.perf_counter()
            for call in calls:
                call()
            per_call.append((time.perf_counter() - start) * 1e3 / len(calls))
        return _summary(per_call, False)
    run, graph = _graphed(calls, device)
    for _ in range(warmup):
        run()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for first, last in zip(starts, ends, strict=True):
        first.record()
        run()
        last.record()
    torch.cuda.synchronize(device)
    return _summary([s.elapsed_time(e) / len(calls) for s, e in zip(starts, ends, strict=True)],
                    graph is not None)


def _graphed(calls: Sequence[Callable[[], Any]], device: torch.device
             ) -> tuple[Callable[[], Any], Any]:
    """A replay of ``calls`` captured as a CUDA graph, or the eager calls if capture fails."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # lazy initialisation (cuBLAS handles) outside the capture
        for _ in range(3):
            for call in calls:
                call()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for call in calls:
                call()
    except RuntimeError:
        torch.cuda.synchronize(device)
        return (lambda: [call() for call in calls]), None
    return graph.replay, graph


def copies_for(weight_bytes: int, device: torch.device) -> int:
    """Copies of a layer's weights whose one pass reads at least twice the L2 cache."""
    if device.type != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(1, min(MAX_COPIES, -(-2 * l2 // max(weight_bytes, 1))))


def measure_entries(points: Sequence[GemmPoint], batch: int, tokens: int, device: torch.device,
                    dtype: torch.dtype, warmup: int = WARMUP, repeats: int = REPEATS,
                    seed: int = 0) -> list[LatencyEntry]:
    """Time each of ``points`` at ``batch × tokens`` rows (see the module docstring)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, entries = batch * tokens, []
    for point in points:
        first = make_kernel(point, device, dtype, gen)
        kernels = [first] + [make_kernel(point, device, dtype, gen)
                             for _ in range(copies_for(first.weight_bytes, device) - 1)]
        x = torch.randn(rows, point.in_features, device=device, dtype=dtype, generator=gen)
        calls = max(MIN_CALLS if device.type == "cuda" else 1, len(kernels))
        cycle = [kernels[i % len(kernels)] for i in range(calls)]
        timing = time_calls([_call(k, x) for k in cycle], device, warmup, repeats)
        entries.append(LatencyEntry(point, batch, tokens, timing,
                                    first.runs_as + _eager_note(timing, device), first.fast))
        del kernels, cycle, first
    return entries


def _eager_note(timing: Timing, device: torch.device) -> str:
    return ", eager: CUDA graph capture failed" if device.type == "cuda" and not timing.graph else ""


def _call(kernel: PreparedKernel, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: kernel.run(x)


# -- a model's forward pass -------------------------------------------------------------------
class NullLinear(nn.Module):
    """A searched layer taken out of the forward pass: zeros of its output shape, no GEMM."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class KernelLinear(nn.Module):
    """A searched layer running its option's kernel (:mod:`.kernels`)."""

    def __init__(self, kernel: PreparedKernel, in_features: int, out_features: int) -> None:
        super().__init__()
        self.kernel, self.in_features, self.out_features = kernel, in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kernel.run(x.reshape(-1, self.in_features))
        return y.view(*x.shape[:-1], self.out_features)


@contextmanager
def swapped(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """``model`` with the submodules named in ``modules`` replaced, restored on exit."""
    saved: dict[str, nn.Module] = {}
    try:
        for name, module in modules.items():
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            saved[name] = getattr(owner, child)
            setattr(owner, child, module)
        yield model
    finally:
        for name, module in saved.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module)


def time_forward(model: nn.Module, batch: int, tokens: int, device: torch.device,
                 warmup: int = WARMUP, repeats: int = REPEATS, seed: int = 0) -> Timing:
    """The model's forward pass over ``batch × tokens`` random token ids, no KV cache."""
    gen = torch.Generator(device=device).manual_seed(seed)
    vocab = int(getattr(model, "config").vocab_size)  # noqa: B009  (a transformers model)
    ids = torch.randint(vocab, (batch, tokens), device=device, generator=gen)
    return time_calls([lambda: model(input_ids=ids, use_cache=False)], device, warmup, repeats)


def rest_timing(model: nn.Module, layers: Mapping[str, int], batch: int, tokens: int,
                device: torch.device, warmup: int = WARMUP, repeats: int = REPEATS) -> Timing:
    """The forward pass with the layers of ``layers`` (name → out_features) taken out."""
    with swapped(model, {name: NullLinear(out) for name, out in layers.items()}):
        return time_forward(model, batch, tokens, device, warmup, repeats)


# -- what a worker runs for the job (cluster/latency.py sends these as Ray tasks) -------------
def _on(device: str, threads: int) -> torch.device:
    if device == "cpu":
        torch.set_num_threads(threads)
    return torch.device(device)


def probe_device(device: str, threads: int) -> DeviceKey:
    """The key of the device a worker with this setup runs on."""
    return device_key(_on(device, threads))


def measure_on_worker(points: Sequence[GemmPoint], batch: int, tokens: int, device: str,
                      dtype: str, threads: int) -> tuple[DeviceKey, list[LatencyEntry]]:
    """:func:`measure_entries` on this worker's device, with the key they are stored under."""
    where = _on(device, threads)
    return device_key(where), measure_entries(points, batch, tokens, where, getattr(torch, dtype))


def rest_on_worker(model_path: str, kind: str, dtype: str, device: str, layers: Mapping[str, int],
                   batch: int, tokens: int, threads: int) -> tuple[DeviceKey, Timing]:
    """:func:`rest_timing` of the model itself (loaded as the workers load it)."""
    from .model_loading import load_model

    where = _on(device, threads)
    model = load_model(model_path, kind, dtype, device)
    return device_key(where), rest_timing(model, layers, batch, tokens, where)
