"""The latency table's measurement on CPU: kernels, timing, the rest of a forward pass.

CPU kernels stand in for the GPU's (the same ops where torch has them on both): what is checked
is the logic, what is timed, what each entry says it ran, and that the forward pass is left as
it was.
"""

from __future__ import annotations

import time

import pytest
import torch

from mpsearch.spaces.latency import GemmPoint
from mpsearch.workers.kernels import make_kernel
from mpsearch.workers.latency import (
    KernelLinear,
    NullLinear,
    copies_for,
    device_key,
    measure_entries,
    rest_timing,
    swapped,
    time_calls,
    time_forward,
)

CPU = torch.device("cpu")


def test_time_calls_reports_the_median_per_call_and_its_spread():
    # two calls per run, each sleeping 2 ms: a run takes >= 4 ms, so >= 2 ms per call
    timing = time_calls([lambda: time.sleep(0.002)] * 2, CPU, warmup=1, repeats=9)
    assert timing.repeats == 9 and not timing.graph
    assert 2.0 <= timing.min_ms <= timing.p10 <= timing.ms <= timing.p90 <= timing.max_ms
    assert timing.ms < 20.0


@pytest.mark.parametrize(("kernel", "fast", "runs_as"), [
    ("fp16", True, "torch.nn.functional.linear"),
    ("int4-g128-asym", True, "torch._weight_int4pack_mm_for_cpu"),
    ("int8-ch-sym", True, "torch._weight_int8pack_mm"),
    ("w8a8-int8", True, "torch._int_mm"),
    ("w8a8-fp8", True, "torch._scaled_mm"),
    ("int8-g128-asym", False, "dequantize + matmul"),
    ("int3-g64-sym", False, "dequantize + matmul"),
    ("nf4", False, "dequantize + matmul"),
    ("fp8_e4m3", False, "dequantize + matmul"),
    ("q4_1", False, "dequantize + matmul"),
])
def test_each_kernel_runs_its_op_and_says_so(kernel, fast, runs_as):
    k = make_kernel(GemmPoint(96, 256, kernel), CPU, torch.float32)
    assert k.fast is fast and k.runs_as.startswith(runs_as)
    y = k.run(torch.randn(5, 256))
    assert y.shape == (5, 96) and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_a_refused_fast_kernel_falls_back_and_names_the_refusal():
    # tinygemm on a CPU packs no weights of 60 rows (a multiple of 16 it needs): the entry is
    # timed as dequantize + matmul
    k = make_kernel(GemmPoint(60, 128, "int4-g128-asym"), CPU, torch.float32)
    assert not k.fast
    assert k.runs_as.startswith("dequantize + matmul") and "divisible by 16" in k.runs_as.replace(
        "dividable", "divisible")
    assert k.run(torch.randn(3, 128)).shape == (3, 60)


def test_w8a8_int8_kernel_is_a_real_int8_gemm():
    # zero activations give zero output; scaled activations give scaled output (per-token scale)
    k = make_kernel(GemmPoint(32, 64, "w8a8-int8"), CPU, torch.float32)
    x = torch.randn(3, 64)
    assert torch.equal(k.run(torch.zeros(3, 64)), torch.zeros(3, 32))
    torch.testing.assert_close(k.run(2 * x), 2 * k.run(x), rtol=1e-5, atol=1e-4)


def test_measure_entries_times_every_point_at_the_rows_asked():
    points = [GemmPoint(64, 128, "fp16"), GemmPoint(64, 128, "int8-g128-asym")]
    entries = measure_entries(points, batch=4, tokens=2, device=CPU, dtype=torch.float32,
                              warmup=1, repeats=5)
    assert [e.point for e in entries] == points
    assert all(e.batch == 4 and e.tokens == 2 and e.timing.repeats == 5 for e in entries)
    assert all(0 < e.timing.p10 <= e.ms <= e.timing.p90 for e in entries)
    assert [e.fast for e in entries] == [True, False]
    assert copies_for(10**9, CPU) == 1  # no cache to defeat on a CPU


def test_device_key_names_the_device_and_the_libraries():
    key = device_key(CPU)
    assert key.name.startswith("cpu ") and f"{torch.get_num_threads()} threads" in key.name
    assert key.versions.startswith(f"torch {torch.__version__}")


def test_rest_takes_the_searched_layers_out_and_puts_them_back(tiny_llama_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    searched = {n: m.out_features for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and ".layers." in n}
    ids = torch.randint(100, (2, 3))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with swapped(model, {n: NullLinear(o) for n, o in searched.items()}):
            nulled = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)  # restored
    assert not torch.allclose(before, nulled)  # the blocks added nothing: only embeddings, head
    rest = rest_timing(model, searched, batch=2, tokens=1, device=CPU, warmup=1, repeats=3)
    assert rest.ms > 0 and rest.repeats == 3
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in searched)
    # a kernel module in place of a layer computes with its own weights, same shape
    name = next(iter(searched))
    layer = model.get_submodule(name)
    kernel = make_kernel(GemmPoint(layer.out_features, layer.in_features, "fp16"), CPU,
                         torch.float32)
    with swapped(model, {name: KernelLinear(kernel, layer.in_features, layer.out_features)}):
        assert time_forward(model, 2, 1, CPU, warmup=1, repeats=3).ms > 0
