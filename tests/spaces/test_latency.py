"""A candidate's latency by the table: the sum over its layers' entries plus the measured rest."""

from __future__ import annotations

import pytest

from mpsearch.spaces import Candidate, Gene, LayerInfo, SearchSpace, parse_option
from mpsearch.spaces.errors import BudgetError
from mpsearch.spaces.latency import GemmPoint, LatencyEntry, LatencyTable, Timing, gemm_points, kernel_key

OPTS = tuple(parse_option(o) for o in ("int4-g128-asym-gptq", "int8-g128-asym", "fp16"))
Q, UP = LayerInfo("layers.0.q", 128, 128), LayerInfo("layers.0.up", 128, 256)
K = LayerInfo("layers.0.k", 128, 64)
SPACE = SearchSpace((Gene("qk", (Q, K), OPTS), Gene("up", (UP,), OPTS)))


def table(ms: dict[tuple[int, int, str], float], rest: float = 2.0) -> LatencyTable:
    entries = {GemmPoint(o, i, k): LatencyEntry(GemmPoint(o, i, k), 8, 1,
                                                Timing(v, v, v, v, v, 1), "op", True)
               for (o, i, k), v in ms.items()}
    return LatencyTable("dev", "v", "bfloat16", 8, 1, entries, rest)


MS = {(128, 128, "int4-g128-asym"): 0.1, (128, 128, "int8-g128-asym"): 0.3,
      (128, 128, "fp16"): 0.2, (64, 128, "int4-g128-asym"): 0.05, (64, 128, "int8-g128-asym"): 0.15,
      (64, 128, "fp16"): 0.1, (256, 128, "int4-g128-asym"): 0.4, (256, 128, "int8-g128-asym"): 1.0,
      (256, 128, "fp16"): 0.7}


def test_kernel_key_drops_what_does_not_change_the_kernel():
    assert kernel_key(parse_option("int4-g128-asym-gptq")) == "int4-g128-asym"
    assert kernel_key(parse_option("int3-ch-sym-clip")) == "int3-ch-sym"
    assert kernel_key(parse_option("int4-g128-asym+2:4")) == "int4-g128-asym"
    assert kernel_key(parse_option("nvfp4")) == "nvfp4"
    assert kernel_key(parse_option("fp16")) == "fp16"
    assert kernel_key(parse_option("w8a8-int8")) == "w8a8-int8"
    assert kernel_key(parse_option("w8a8-fp8")) == "w8a8-fp8"
    assert kernel_key(parse_option("fp8_e4m3")) == "fp8_e4m3"  # weight-only: dequantize + matmul


def test_candidate_latency_is_the_sum_of_its_layers_plus_the_rest():
    t = table(MS)
    # qk under int8 (q 0.3 + k 0.15), up under fp16 (0.7), rest 2.0
    assert t.candidate_ms(SPACE, Candidate((1, 2))) == pytest.approx(0.3 + 0.15 + 0.7 + 2.0)
    assert t.candidate_ms(SPACE, Candidate((0, 0))) == pytest.approx(0.1 + 0.05 + 0.4 + 2.0)
    assert t.gene_costs(SPACE) == (pytest.approx((0.15, 0.45, 0.3)), pytest.approx((0.4, 1.0, 0.7)))
    assert t.forward_ms([GemmPoint(128, 128, "fp16"), GemmPoint(256, 128, "fp16")]) == \
        pytest.approx(0.2 + 0.7 + 2.0)


def test_points_of_a_space_and_what_a_table_lacks():
    assert len(gemm_points(SPACE)) == 9  # three shapes × three kernels (gptq times as rtn)
    partial = table({k: v for k, v in MS.items() if k[2] != "fp16"})
    assert partial.missing(SPACE) == [GemmPoint(64, 128, "fp16"), GemmPoint(128, 128, "fp16"),
                                      GemmPoint(256, 128, "fp16")]
    with pytest.raises(BudgetError, match="no entry for 128x128 fp16"):
        partial.candidate_ms(SPACE, Candidate((2, 0)))
