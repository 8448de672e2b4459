"""Round-to-nearest quantizers against an independent, element-by-element reference."""

import numpy as np
import pytest
import torch

from mpsearch.spaces import QuantOption, parse_option
from mpsearch.workers.registry import quantize_weight

FP16_TINY = 2.0**-14  # smallest normal fp16 number


def reference_rtn(w: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    """Textbook RTN in plain numpy, one group at a time (fp16-rounded scales, as stored)."""
    out = np.empty_like(w)
    rows, cols = w.shape
    for r in range(rows):
        for start in range(0, cols, group):
            g = w[r, start:start + group].astype(np.float64)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                scale = max(float(np.float16(np.abs(g).max() / qmax)), FP16_TINY)
                q = np.clip(np.round(g / scale), -qmax - 1, qmax)
                out[r, start:start + group] = q * scale
            else:
                lo, hi = min(g.min(), 0.0), max(g.max(), 0.0)
                scale = max(float(np.float16((hi - lo) / (2**bits - 1))), FP16_TINY)
                zero = np.clip(np.round(-lo / scale), 0, 2**bits - 1)
                q = np.clip(np.round(g / scale) + zero, 0, 2**bits - 1)
                out[r, start:start + group] = (q - zero) * scale
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_matches_reference(bits, group, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(8, 256) * 0.05
    option = QuantOption("int", bits, group, symmetric)
    got = quantize_weight(w, option).numpy()
    want = reference_rtn(w.numpy(), bits, group or 256, symmetric)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    levels = 2**bits
    for row in range(got.shape[0]):  # each group uses at most 2^b distinct values
        g = got[row, : (group or 256)]
        assert len(np.unique(g)) <= levels


def test_error_falls_with_bits_and_smaller_groups():
    torch.manual_seed(0)
    w = torch.randn(64, 512)

    def err(label: str) -> float:
        return float((quantize_weight(w, parse_option(label)) - w).pow(2).mean())

    assert err("int2-g128-asym") > err("int3-g128-asym") > err("int4-g128-asym") > err("int8-g128-asym")
    assert err("int4-ch-asym") > err("int4-g128-asym") > err("int4-g32-asym")
    assert err("fp16") < 1e-6


def test_fp16_passthrough_keeps_dtype_and_shape():
    w = torch.randn(4, 128, dtype=torch.bfloat16)
    out = quantize_weight(w, parse_option("fp16"))
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


def test_zero_group_gives_zeros_not_nan():
    w = torch.zeros(2, 128)
    for label in ("int4-g128-asym", "int4-g128-sym"):
        out = quantize_weight(w, parse_option(label))
        assert torch.isfinite(out).all() and (out == 0).all()
