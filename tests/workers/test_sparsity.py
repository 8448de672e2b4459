"""Pruning masks (magnitude, Wanda; unstructured, 2:4) and prune-then-quantize."""

import pytest
import torch

from mpsearch.spaces import parse_option
from mpsearch.workers.registry import quantize_dense, quantize_weight
from mpsearch.workers.sparsity import prune_mask


def weights(rows=16, cols=128, seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(rows, cols)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_2_4_masks_keep_exactly_two_of_every_four(method):
    w = weights()
    act_norm = torch.rand(128) + 0.1
    mask = prune_mask(w, 0.5, "2:4", method, act_norm)
    assert (mask.reshape(16, 32, 4).sum(-1) == 2).all()
    out = quantize_weight(w, parse_option("fp16+2:4" + "-wanda" * (method == "wanda")), act_norm)
    assert ((out != 0).reshape(16, 32, 4).sum(-1) == 2).all()
    # quantized survivors may round to zero, but a pruned weight never comes back
    quantized = quantize_weight(w, parse_option("int4-g128-asym+2:4"))
    assert ((quantized != 0).reshape(16, 32, 4).sum(-1) <= 2).all()


def test_2_4_keeps_the_two_largest_of_each_four():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]])
    assert prune_mask(w, 0.5, "2:4").tolist() == [[False, True, True, False,
                                                   True, True, False, False]]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_unstructured_prunes_the_smallest_of_each_row(sparsity):
    w = weights()
    mask = prune_mask(w, sparsity)
    assert (mask.logical_not().sum(1) == round(sparsity * 128)).all()
    a = w.abs()
    largest_pruned = torch.where(mask, torch.zeros_like(a), a).amax(1)
    smallest_kept = torch.where(mask, a, torch.full_like(a, float("inf"))).amin(1)
    assert (largest_pruned <= smallest_kept).all()


def test_wanda_weighs_by_activation_norm_and_differs_from_magnitude():
    w = weights()
    act_norm = torch.ones(128)
    act_norm[::2] = 10.0  # every other input is ten times louder
    for pattern, s in (("unstructured", 0.5), ("2:4", 0.5)):
        wanda = prune_mask(w, s, pattern, "wanda", act_norm)
        magnitude = prune_mask(w, s, pattern, "magnitude")
        assert not torch.equal(wanda, magnitude)
        assert torch.equal(wanda, prune_mask(w * act_norm, s, pattern, "magnitude"))
    assert prune_mask(w, 0.5, method="wanda", act_norm=act_norm)[:, ::2].sum() > 16 * 32
    # no norms, or equal norms: Wanda is magnitude pruning
    assert torch.equal(prune_mask(w, 0.5, method="wanda"), prune_mask(w, 0.5))
    assert torch.equal(prune_mask(w, 0.5, method="wanda", act_norm=torch.full((128,), 3.0)),
                       prune_mask(w, 0.5))


def test_wanda_option_uses_the_act_norm_it_is_given():
    w = weights()
    act_norm = torch.linspace(0.1, 10, 128)
    option = parse_option("fp16+s50-wanda")
    with_norms = quantize_weight(w, option, act_norm=act_norm)
    assert not torch.equal(with_norms != 0, quantize_weight(w, option) != 0)
    assert torch.equal(with_norms != 0, prune_mask(w, 0.5, "unstructured", "wanda", act_norm))


@pytest.mark.parametrize("label", ["int4-g128-asym+s50", "nf4+2:4", "nvfp4+s25", "fp8_e4m3+2:4"])
def test_prune_then_quantize_the_survivors(label):
    w = weights()
    option = parse_option(label)
    mask = prune_mask(w, option.sparsity, option.sparsity_pattern)
    out = quantize_weight(w, option)
    assert (out[~mask] == 0).all()
    assert torch.equal(out, quantize_dense(w * mask, option) * mask)


def test_bad_act_norm_shape_is_refused():
    with pytest.raises(ValueError, match="one norm per input feature"):
        prune_mask(weights(), 0.5, method="wanda", act_norm=torch.ones(7))
