"""GPTQ against RTN and against its own invariants, on layers with correlated inputs."""

import pytest
import torch

from mpsearch.spaces.options import QuantOption
from mpsearch.workers.gptq import (
    HessianAccumulator,
    activation_order,
    dampened_inverse_cholesky,
    gptq_quantize,
    hessian_error,
    lower_triangular_inverse,
    output_error,
    permuted_hessian,
)
from mpsearch.workers.gptq_batch import gptq_quantize_batch
from mpsearch.workers.registry import LayerInputs, handler_for, quantize_weight


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Rows with strongly correlated features, like a transformer layer's inputs."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d // 4, d, generator=g)
    return torch.randn(n, d // 4, generator=g) @ basis + 0.1 * torch.randn(n, d, generator=g)


def hessian_of(X: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(X.shape[1])
    for chunk in X.split(97):  # uneven chunks: the running mean must not depend on them
        acc.add(chunk)
    return acc.H


def test_hessian_is_2xtx_over_n_and_act_norm_is_column_norm():
    X = correlated_inputs(300, 64)
    acc = HessianAccumulator(64)
    acc.add(X[:100].reshape(4, 25, 64))  # leading dims are flattened: (batch, seq, d) works
    acc.add(X[100:])
    torch.testing.assert_close(acc.H, 2 * X.t() @ X / 300, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(acc.act_norm, X.norm(dim=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size,symmetric", [(32, False), (64, True), (None, False)])
def test_gptq_reduces_the_layer_output_error_versus_rtn(bits, group_size, symmetric):
    torch.manual_seed(1)
    W = torch.randn(96, 128) * 0.05
    X = correlated_inputs(512, 128)
    H = hessian_of(X)
    option = QuantOption("int", bits, group_size, symmetric)
    rtn = quantize_weight(W, option)
    gptq = gptq_quantize(W, H, bits, group_size, symmetric, block_size=64)
    e_rtn, e_gptq = output_error(X, W, rtn), output_error(X, W, gptq)
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)
    # the Hessian-weighted proxy is the same objective per calibration row
    assert hessian_error(W, gptq, H) == pytest.approx(2 * e_gptq / 512, rel=1e-2)


@pytest.mark.parametrize("group_size,symmetric", [(32, False), (16, True), (None, True)])
def test_gptq_output_lies_on_the_option_grid(group_size, symmetric):
    torch.manual_seed(2)
    bits = 3
    W = torch.randn(40, 64)
    Q = gptq_quantize(W, hessian_of(correlated_inputs(200, 64)), bits, group_size, symmetric)
    group = group_size or 64
    for row in Q.reshape(-1, group):
        assert len(torch.unique(row)) <= 2**bits  # one scale per group, 2^b codes at most


def test_gptq_equals_rtn_when_the_hessian_is_diagonal():
    """Uncorrelated inputs leave no error to compensate: GPTQ must round exactly like RTN."""
    torch.manual_seed(3)
    W = torch.randn(32, 64)
    H = torch.diag(torch.rand(64) + 0.5)
    for option in (QuantOption("int", 4, 32, False), QuantOption("int", 3, None, True)):
        got = gptq_quantize(W, H, option.bits, option.group_size, option.symmetric)
        torch.testing.assert_close(got, quantize_weight(W, option), rtol=0, atol=0)


def test_dead_inputs_are_zeroed_and_mask_keeps_pruned_weights_at_zero():
    torch.manual_seed(4)
    W = torch.randn(16, 32)
    X = correlated_inputs(100, 32)
    X[:, 5] = 0  # an input never active in the calibration data
    mask = (torch.rand(16, 32) > 0.5).float()
    Q = gptq_quantize(W, hessian_of(X), 4, 16, False, mask=mask)
    assert torch.all(Q[:, 5] == 0)
    assert torch.all(Q[mask == 0] == 0)


def test_bfloat16_weights_come_back_in_their_dtype():
    W = torch.randn(8, 32, dtype=torch.bfloat16)
    Q = gptq_quantize(W, hessian_of(correlated_inputs(64, 32)), 4, 32, False)
    assert Q.dtype == torch.bfloat16 and Q.shape == W.shape


def _stack_of_layers(B: int, rows: int, cols: int, seed: int):
    torch.manual_seed(seed)
    W = torch.randn(B, rows, cols) * 0.05
    H = torch.stack([hessian_of(correlated_inputs(4 * cols, cols, seed + b)) for b in range(B)])
    H[-1, 7, :] = H[-1, :, 7] = 0  # one layer with a dead input
    return W, H


def test_the_inverse_factor_is_the_reference_cholesky_of_the_dampened_inverse():
    _, H = _stack_of_layers(3, 8, 64, 10)
    U, dead = dampened_inverse_cholesky(H)
    for b in range(3):
        Hd = H[b].clone()
        Hd[dead[b], dead[b]] = 1
        Hd.diagonal().add_(0.01 * Hd.diagonal().mean())
        reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)),
                                          upper=True)  # the GPTQ reference's three steps
        torch.testing.assert_close(U[b], reference, rtol=1e-3, atol=5e-5)  # fp32 rounding
        torch.testing.assert_close(U[b].t() @ U[b], torch.linalg.inv(Hd), rtol=1e-3, atol=1e-4)
    assert dead[-1, 7] and int(dead.sum()) == 1


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("bits,group_size,symmetric,block_size",
                         [(4, 32, False, 64), (3, None, True, 128), (3, 16, True, 40),
                          (8, 64, False, 32)])
def test_batched_gptq_equals_the_per_layer_reference(bits, group_size, symmetric, block_size,
                                                     clip):
    W, H = _stack_of_layers(4, 24, 128, 20)
    mask = (torch.rand(W.shape) > 0.3).float() if bits == 8 else None
    U, dead = dampened_inverse_cholesky(H)
    got = gptq_quantize_batch(W, U, dead, bits, group_size, symmetric, block_size, mask,
                              clip=clip)
    for b in range(W.shape[0]):
        want = gptq_quantize(W[b], H[b], bits, group_size, symmetric, block_size,
                             mask=None if mask is None else mask[b], clip=clip)
        if clip:
            assert got[b].equal(want)  # the same grid search on the same rows, bit for bit
        torch.testing.assert_close(got[b], want, rtol=1e-6, atol=1e-6)


def test_layers_sharing_a_hessian_may_be_stacked_along_rows():
    """q, k and v read the same inputs: GPTQ of [q; k; v] under one Hessian is GPTQ of each."""
    W, H = _stack_of_layers(1, 40, 64, 30)
    U, dead = dampened_inverse_cholesky(H)
    stacked = gptq_quantize_batch(W, U, dead, 4, 32)[0]
    parts = [gptq_quantize(part, H[0], 4, 32) for part in W[0].split([8, 16, 16])]
    torch.testing.assert_close(stacked, torch.cat(parts), rtol=1e-6, atol=1e-6)


def test_the_blocked_triangular_inverse_is_the_inverse():
    torch.manual_seed(5)
    A = torch.randn(3, 300, 300, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.transpose(1, 2) + 300 * torch.eye(300, dtype=torch.float64))
    inv = lower_triangular_inverse(L, leaf=64)  # three levels of blocks, odd sizes
    # the reference solves L X = I (LAPACK's trsm): batched torch.linalg.inv goes through MKL's
    # LU with pivoting, which fails on entry (DLASWP) in some threaded CPU builds
    eye = torch.eye(300, dtype=torch.float64).expand_as(L)
    torch.testing.assert_close(inv, torch.linalg.solve_triangular(L, eye, upper=False),
                               rtol=1e-10, atol=1e-12)
    assert torch.all(inv.triu(1) == 0)


def skewed_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Correlated inputs whose columns differ in scale by 30x, in no particular order: the
    layers activation order is for (a few input channels carry most of the signal)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, d)[torch.randperm(d, generator=g)]
    return correlated_inputs(n, d, seed) * scales


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size,symmetric", [(32, False), (16, True), (None, False)])
def test_activation_order_lowers_the_output_error_on_the_plain_grid(bits, group_size, symmetric):
    torch.manual_seed(6)
    W = torch.randn(64, 128) * 0.05
    X = skewed_inputs(512, 128)
    H = hessian_of(X)
    plain = gptq_quantize(W, H, bits, group_size, symmetric)
    ordered = gptq_quantize(W, H, bits, group_size, symmetric, act_order=True)
    assert output_error(X, W, ordered) < 0.97 * output_error(X, W, plain)
    # static groups: every group of the original columns on one grid of 2^b codes
    group = group_size or 128
    for row in ordered.reshape(-1, group):
        assert len(torch.unique(row)) <= 2**bits
    # the option, through its handler: the same weights, and stored parts that decode to them
    option = QuantOption("int", bits, group_size, symmetric, rounding="gptq-act")
    handler = handler_for(option)
    assert handler.quantize(W, option, LayerInputs(hessian=H)).equal(ordered)
    enc = handler.encode(W, option, LayerInputs(hessian=H))
    assert enc.scale.shape == (64, 128 // group) and enc.dequantize(torch.float32).equal(ordered)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("bits,group_size,symmetric,block_size",
                         [(4, 32, False, 64), (3, None, True, 128), (3, 16, True, 40),
                          (8, 64, False, 32)])
def test_batched_activation_order_equals_the_per_layer_reference(bits, group_size, symmetric,
                                                                 block_size, clip):
    W, H = _stack_of_layers(4, 24, 128, 40)
    scale = torch.linspace(0.2, 2.0, 128).roll(37)  # inputs of unequal scales, in no order
    H = H * scale[:, None] * scale[None, :]
    mask = (torch.rand(W.shape) > 0.3).float() if bits == 8 else None
    perm = torch.stack([activation_order(h) for h in H])
    assert not torch.equal(perm[0], torch.arange(128))
    factors = [dampened_inverse_cholesky(permuted_hessian(h, p)) for h, p in zip(H, perm, strict=True)]
    U, dead = torch.stack([f[0] for f in factors]), torch.stack([f[1] for f in factors])
    got = gptq_quantize_batch(W, U, dead, bits, group_size, symmetric, block_size, mask, perm=perm,
                              clip=clip)
    for b in range(W.shape[0]):
        want = gptq_quantize(W[b], H[b], bits, group_size, symmetric, block_size,
                             mask=None if mask is None else mask[b], act_order=True, clip=clip)
        assert got[b].equal(want)  # the same arithmetic, bit for bit
    assert torch.all(got[-1][:, 7] == 0)  # the dead input, in its original place


def heavy_tailed_weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Weights with a few large entries per group (Student's t, 3 degrees of freedom), as trained
    layers have: a min/max grid spends most of its few levels on them."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(3, rows, cols, generator=g).square().sum(0)
    return 0.02 * normal / (chi2 / 3).sqrt()


# Where clipping is for: heavy-tailed weights on grids of few levels (symmetric groups, whose
# range is set by the largest |w|; 2 bits on one scale per channel). On small asymmetric groups
# at 3-4 bits the min/max grid is often better for GPTQ's output error (its error feedback
# absorbs what clipping saves), which is why clipping is a per-layer option the search chooses.
@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 64, True), (3, 64, True), (4, 64, True),
                                                       (2, None, False)])
@pytest.mark.parametrize("rounding", ["gptq", "gptq-act"])
@pytest.mark.parametrize("seed", [7, 8])
def test_clipped_grids_lower_gptq_s_output_error_on_heavy_tailed_weights(bits, group_size,
                                                                        symmetric, rounding,
                                                                        seed):
    W = heavy_tailed_weights(64, 128, seed)
    X = correlated_inputs(512, 128, seed)
    H = hessian_of(X)
    plain = QuantOption("int", bits, group_size, symmetric, rounding=rounding)
    clipped = QuantOption("int", bits, group_size, symmetric, clip=True, rounding=rounding)
    handler, inputs = handler_for(clipped), LayerInputs(hessian=H)
    e_plain = output_error(X, W, handler.quantize(W, plain, inputs))
    Q = handler.quantize(W, clipped, inputs)
    assert output_error(X, W, Q) < 0.95 * e_plain
    assert Q.equal(gptq_quantize(W, H, bits, group_size, symmetric, act_order=plain.act_order,
                                 clip=True))
    group = group_size or 128
    for row in Q.reshape(-1, group):  # one (clipped) grid per group, 2^b codes at most
        assert len(torch.unique(row)) <= 2**bits
    enc = handler.encode(W, clipped, inputs)  # the stored parts decode to the scored weights
    assert enc.dequantize(torch.float32).equal(Q)
    assert enc.scale.shape == (64, 128 // group)
