"""Number formats against independent references: the formats' own definitions, in numpy."""

import math

import numpy as np
import pytest
import torch

from mpsearch.spaces import QuantOption, parse_option
from mpsearch.workers.formats import (
    E2M1_GRID,
    NF4_CODE,
    mxfp4_encode,
    nf4_encode,
    nvfp4_encode,
    quantize_fp8,
    round_e2m1,
)
from mpsearch.workers.quantize import CLIP_SHRINKS
from mpsearch.workers.registry import quantize_weight

FP16_TINY = 2.0**-14
E2M1 = np.array(sorted({s * v for v in E2M1_GRID for s in (1, -1)}))


def weights(rows=8, cols=256, seed=0, scale=0.05) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(rows, cols) * scale


def fp8_values(dtype) -> np.ndarray:
    """Every finite value of an FP8 dtype, from its 256 bit patterns."""
    v = torch.arange(256, dtype=torch.uint8).view(dtype).float().numpy()
    return np.unique(v[np.isfinite(v)])


def nearest(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return grid[np.abs(x[..., None] - grid).argmin(-1)]


def assert_nearest(got: np.ndarray, x: np.ndarray, grid: np.ndarray) -> None:
    """``got`` lies on ``grid`` and is a nearest grid point to ``x`` (whatever a tie picks)."""
    assert np.isin(got, grid).all()
    best = np.abs(x[..., None] - grid).min(-1)
    np.testing.assert_allclose(np.abs(got - x), best, rtol=0, atol=1e-6 * np.abs(x).max())


# -- FP8 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,dtype", [("fp8_e4m3", torch.float8_e4m3fn),
                                       ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_is_the_float8_cast_of_the_scaled_weight(fmt, dtype):
    w = weights(scale=3.0)
    w[0, 0] = 0.0
    got = quantize_weight(w, parse_option(fmt)).numpy()
    fmax = float(torch.finfo(dtype).max)
    scale = np.maximum(np.abs(w.numpy()).max(1, keepdims=True) / fmax, 0).astype(np.float16)
    scale = np.maximum(scale.astype(np.float64), FP16_TINY)
    x = np.clip(w.numpy() / scale, -fmax, fmax)
    cast = torch.from_numpy(x).float().to(dtype).float().numpy()
    np.testing.assert_allclose(got, cast * scale, rtol=1e-6, atol=0)
    assert_nearest(got / scale, x, fp8_values(dtype))  # the cast rounds to a nearest FP8 value


def test_fp8_saturates_rather_than_overflowing():
    w = torch.tensor([[1e4, -1e4, 1.0, 0.0]])
    for fmt in ("fp8_e4m3", "fp8_e5m2"):
        assert torch.isfinite(quantize_fp8(w, fmt)).all()


# -- FP4 E2M1 -------------------------------------------------------------------------------------
def test_e2m1_rounds_to_nearest_with_ties_to_even():
    x = torch.randn(10_000) * 3
    assert_nearest(round_e2m1(x).numpy(), np.clip(x.numpy(), -6, 6), E2M1)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, 9.0, -100.0])
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, 6.0, -6.0]  # even codes: 0, 1, 2, 4
    assert round_e2m1(ties).tolist() == want


def test_nvfp4_block_scales_are_e4m3_and_values_e2m1():
    w = weights(16, 256, scale=0.02)
    values, s, g = nvfp4_encode(w)
    assert values.shape == (16 * 256 // 16, 16)
    assert torch.equal(s.to(torch.float8_e4m3fn).float(), s) and float(s.max()) <= 448
    assert np.isin(values.numpy(), E2M1).all()
    # reference: per-tensor fp32 scale, nearest-E4M3 block scale, nearest-E2M1 values
    blocks = w.numpy().reshape(-1, 16).astype(np.float64)
    g_ref = np.abs(blocks).max() / (448 * 6)
    s_ref = nearest(np.abs(blocks).max(1) / 6 / g_ref, fp8_values(torch.float8_e4m3fn))[:, None]
    want = nearest(blocks / (s_ref * g_ref), E2M1) * s_ref * g_ref
    got = quantize_weight(w, parse_option("nvfp4")).numpy().reshape(-1, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert float(g) == pytest.approx(g_ref, rel=1e-6)


def test_mxfp4_scales_are_powers_of_two_of_the_ocp_rule():
    w = weights(8, 256, scale=0.1)
    values, scale = mxfp4_encode(w)
    exps = np.log2(scale.numpy())
    assert (exps == np.round(exps)).all()  # E8M0: a pure power of two
    blocks = w.numpy().reshape(-1, 32).astype(np.float64)
    want_exp = [math.floor(math.log2(a)) - 2 for a in np.abs(blocks).max(1)]
    assert exps[:, 0].tolist() == want_exp
    assert np.isin(values.numpy(), E2M1).all()
    want = nearest(np.clip(blocks / 2.0 ** np.array(want_exp)[:, None], -6, 6), E2M1)
    got = quantize_weight(w, parse_option("mxfp4")).numpy().reshape(-1, 32)
    np.testing.assert_allclose(got, want * 2.0 ** np.array(want_exp)[:, None], rtol=1e-6)


def test_nf4_outputs_the_nearest_scaled_code():
    w = weights(8, 256)
    indices, absmax = nf4_encode(w)
    assert indices.min() >= 0 and indices.max() <= 15
    blocks = w.numpy().reshape(-1, 64).astype(np.float64)
    a_ref = np.abs(blocks).max(1, keepdims=True).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(absmax.numpy(), a_ref)
    code = np.array(NF4_CODE)
    chosen = code[indices.numpy()]
    assert_nearest(chosen, blocks / a_ref, code)
    got = quantize_weight(w, parse_option("nf4")).numpy().reshape(-1, 64)
    np.testing.assert_allclose(got, chosen * a_ref, rtol=1e-6, atol=0)  # values ⊂ a · code
    assert len(NF4_CODE) == 16 and NF4_CODE[0] == -1.0 and NF4_CODE[7] == 0.0 and NF4_CODE[-1] == 1.0


# -- integers: MSE clipping -----------------------------------------------------------------------
def reference_clip(g: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Brute force over the shrink grid for one group, RTN in plain numpy (fp16 scales)."""
    best, best_err = None, np.inf
    for shrink in CLIP_SHRINKS:
        if symmetric:
            qmax = 2 ** (bits - 1) - 1
            scale = max(float(np.float16(np.abs(g).max() * shrink / qmax)), FP16_TINY)
            out = np.clip(np.round(g / scale), -qmax - 1, qmax) * scale
        else:
            qmax = 2**bits - 1
            lo, hi = min(g.min(), 0.0) * shrink, max(g.max(), 0.0) * shrink
            scale = max(float(np.float16((hi - lo) / qmax)), FP16_TINY)
            zero = np.clip(np.round(-lo / scale), 0, qmax)
            out = (np.clip(np.round(g / scale) + zero, 0, qmax) - zero) * scale
        err = ((out - g) ** 2).sum()
        if err < best_err - 1e-12:
            best, best_err = out, err
    return best


@pytest.mark.parametrize("label", ["int3-g64-sym-clip", "int4-g128-asym-clip", "int2-ch-asym-clip"])
def test_clip_is_the_mse_optimal_shrink_and_never_worse_than_rtn(label):
    torch.manual_seed(1)
    w = torch.distributions.StudentT(3.0).sample((8, 256)) * 0.02  # heavy tails: clipping pays
    option = parse_option(label)
    got = quantize_weight(w, option).numpy()
    group = option.group_for(256)
    rtn = quantize_weight(w, parse_option(label.removesuffix("-clip"))).numpy()
    for r in range(8):
        for c in range(0, 256, group):
            g = w.numpy()[r, c:c + group].astype(np.float64)
            np.testing.assert_allclose(got[r, c:c + group], reference_clip(g, option.bits,
                                                                           option.symmetric),
                                       rtol=0, atol=1e-6)
    assert ((got - w.numpy()) ** 2).sum() < ((rtn - w.numpy()) ** 2).sum()


# -- every format ---------------------------------------------------------------------------------
ALL = ["int4-g128-asym", "int3-g64-sym-clip", "fp8_e4m3", "fp8_e5m2", "nvfp4", "mxfp4", "nf4",
       "fp16", "int4-g128-asym+2:4", "int8-ch-sym+s50", "nf4+s30-wanda"]


@pytest.mark.parametrize("label", ALL)
def test_zero_weights_stay_zero_and_finite(label):
    w = torch.zeros(4, 128)
    w[1] = torch.randn(128)  # one live row beside zero ones (per-tensor scales see both)
    out = quantize_weight(w, parse_option(label))
    assert torch.isfinite(out).all() and (out[0] == 0).all() and (out[2:] == 0).all()


@pytest.mark.parametrize("label", ALL)
def test_dtype_and_shape_are_kept(label):
    w = weights(4, 128).to(torch.bfloat16)
    out = quantize_weight(w, parse_option(label))
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


def test_errors_rank_as_the_formats_precision():
    w = weights(64, 512, seed=3)

    def err(label: str) -> float:
        return float((quantize_weight(w, parse_option(label)) - w).pow(2).mean())

    assert err("fp8_e4m3") < err("nf4") < err("int3-g128-asym")
    assert err("fp8_e4m3") < err("fp8_e5m2")  # one more mantissa bit
    assert err("nvfp4") < err("mxfp4")  # finer blocks, finer (non power-of-two) scales


def test_gptq_rounding_is_not_done_without_a_hessian():
    with pytest.raises(ValueError, match="mpsearch.workers.gptq"):
        quantize_weight(weights(), QuantOption("int", 4, 128, rounding="gptq"))
