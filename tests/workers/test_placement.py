"""Placement of a model's blocks over a worker's devices: budgets kept, balance, refusals."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.workers.placement import BlockNeeds, PlacementError, place

GIB = 1 << 30


def blocks(n, weights=10, variants=0, activations=0):
    return [BlockNeeds(f"model.layers.{i}", weights, variants, activations) for i in range(n)]


def counts(placement):
    return [len(s.blocks) for s in placement.shares]


def test_equal_blocks_on_equal_devices_split_evenly_and_in_order():
    p = place(blocks(8), ["cuda:0", "cuda:1"], [100, 100])
    assert counts(p) == [4, 4]
    assert p.shares[0].blocks == tuple(f"model.layers.{i}" for i in range(4))
    assert p.index_of()["model.layers.5"] == 1


def test_the_first_devices_extra_load_moves_blocks_to_the_others():
    # embeddings + head (20) and the reference (10) stay on the first device: three blocks' worth
    p = place(blocks(8), ["a", "b"], [100, 100], fixed=20, fixed_activations=10)
    assert counts(p) in ([2, 6], [3, 5])  # fullest device 60, the least any cut achieves
    first = p.shares[0]
    assert first.weights == 20 + 10 * len(first.blocks) and first.activations == 10
    assert max(s.weights + s.activations for s in p.shares) == 60


def test_variants_spread_so_that_the_fewest_spill_and_what_must_fit_fits():
    # 4 blocks of 10 with 30 of variants each; devices of 50: weights fit 2 + 2, variants spill
    p = place(blocks(4, weights=10, variants=30), ["a", "b"], [50, 50])
    assert counts(p) == [2, 2]
    for s in p.shares:
        assert s.weights + s.activations <= s.budget
        assert s.variant_cap == 30 and s.variants_on_host == 30
        assert s.used <= s.budget


def test_the_working_set_and_kv_cache_count_on_every_used_device():
    p = place(blocks(4, weights=10, activations=5), ["a", "b"], [100, 100], working_set=7)
    assert [s.activations for s in p.shares] == [7 + 10, 7 + 10]
    assert all(s.weights + s.activations <= s.budget for s in p.shares)


def test_a_model_too_big_for_its_devices_is_one_line_naming_the_fix():
    with pytest.raises(PlacementError) as err:
        place(blocks(10, weights=GIB), ["cuda:0", "cuda:1"], [4 * GIB, 4 * GIB])
    message = str(err.value)
    assert "\n" not in message
    assert "does not fit" in message and "workers.gpus" in message
    assert "10.00 GiB" in message  # what the weights need


def test_a_block_larger_than_any_device_is_refused_even_when_the_total_fits():
    with pytest.raises(PlacementError, match="largest block"):
        place([*blocks(2, weights=10), BlockNeeds("model.layers.2", 60, 0)], ["a", "b"], [50, 50])


def test_the_first_devices_own_parts_must_fit_it():
    with pytest.raises(PlacementError):
        place(blocks(2), ["a", "b"], [40, 100], fixed=50)


def test_one_budget_per_device():
    with pytest.raises(PlacementError, match="one budget per device"):
        place(blocks(2), ["a", "b"], [100])


def test_report_has_one_line_per_device_with_its_numbers():
    p = place(blocks(4, weights=GIB, variants=GIB), ["cuda:0", "cuda:1"], [4 * GIB, 4 * GIB])
    lines = p.lines()
    assert len(lines) == 2
    assert lines[0].startswith("cuda:0: model.layers.0 … model.layers.1 (2 blocks); weights 2.00 GiB")
    assert "of 4.00 GiB" in lines[1]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 20), min_size=1, max_size=9),
       budgets=st.lists(st.integers(10, 60), min_size=1, max_size=3),
       fixed=st.integers(0, 10), working=st.integers(0, 5))
def test_the_cut_fits_when_some_cut_fits_and_is_the_most_balanced(sizes, budgets, fixed, working):
    need = [BlockNeeds(f"b{i}", s, s) for i, s in enumerate(sizes)]
    k, n = len(budgets), len(sizes)

    def loads(cut):  # cut: the start index of each device after the first
        bounds = [0, *cut, n]
        out = []
        for d in range(k):
            run = sizes[bounds[d]:bounds[d + 1]]
            base = (working if run or d == 0 else 0) + (fixed if d == 0 else 0)
            out.append((base + sum(run), base + 2 * sum(run)))
        return out

    cuts = [c for c in itertools.combinations_with_replacement(range(n + 1), k - 1)]
    fitting = [c for c in cuts if all(h <= b for (h, _), b in zip(loads(c), budgets, strict=True))]
    if not fitting:
        with pytest.raises(PlacementError):
            place(need, [f"d{i}" for i in range(k)], budgets, fixed=fixed, working_set=working)
        return
    p = place(need, [f"d{i}" for i in range(k)], budgets, fixed=fixed, working_set=working)
    assert [b for s in p.shares for b in s.blocks] == [b.name for b in need]  # all, in order
    for s in p.shares:
        assert s.weights + s.activations <= s.budget
    best = min(max(w / b for (_, w), b in zip(loads(c), budgets, strict=True)) for c in fitting)
    got = max((s.weights + s.activations + s.variants) / s.budget for s in p.shares)
    assert got == pytest.approx(best)
