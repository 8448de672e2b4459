"""The level database on one worker: batched builds equal per-layer ones, files are reused, bad
files are rebuilt, write failures are one-line errors."""

from __future__ import annotations

import errno

import pytest
import torch

from mpsearch.spaces import SpaceConfig, build_space
from mpsearch.spaces.options import QuantOption
from mpsearch.workers import level_codec, level_db
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.level_build import build_task_, load_stored_, plan_tasks
from mpsearch.workers.level_db import LevelDatabase, LevelDatabaseError, stored_option
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.registry import Encoded
from mpsearch.workers.worker import Worker, WorkerSetup

OPTIONS = ["int3-g32-asym-gptq", "int4-g32-asym-gptq", "int4-g32-asym", "int4-g32-asym-clip",
           "fp16"]


def tiny_worker(path: str, level_dir=None, options=OPTIONS, dtype="float32") -> Worker:
    info = inspect_model(ModelConfig(name=path))
    cfg = SpaceConfig.model_validate({"layers": [{"match": r"layers\.\d+\.", "options": options}]})
    space = build_space(info.layers, cfg.rules(), (), info.total_params)
    texts = tuple(load_texts(CalibrationConfig(samples=6, seq_len=24)))
    setup = WorkerSetup(info.path, info.kind, "kl", texts, 24, threads=1, dtype=dtype,
                        level_db=None if level_dir is None else str(level_dir))
    return Worker(setup, space)


def stored_pairs(worker: Worker):
    return [(layer.name, o) for gene in worker.space.genes for layer in gene.layers
            for o in gene.options if stored_option(o)]


def build_all(worker: Worker, workers: int = 1) -> None:
    shapes = {n: tuple(w.shape) for n, w in worker.original.items()}
    for share in plan_tasks(stored_pairs(worker), shapes, workers):
        for task in share:
            build_task_(worker, task)


def test_a_level_built_in_batches_equals_each_layer_compressed_alone(tiny_llama_path):
    worker = tiny_worker(tiny_llama_path)
    build_all(worker, workers=2)
    pairs = stored_pairs(worker)
    assert sorted(worker.computed) == sorted((n, o.label) for n, o in pairs)  # each once
    for name, option in pairs:
        alone = worker._compress(name, option)  # the registry's per-layer path
        torch.testing.assert_close(worker.cache.get((name, option)), alone, rtol=0, atol=0)
    # q, k and v read one input: one Hessian object serves the three
    block = "model.layers.0.self_attn."
    assert worker.hessian(block + "q_proj") is worker.hessian(block + "v_proj")
    assert worker.hessian(block + "q_proj") is not worker.hessian(block + "o_proj")


def test_shares_are_whole_blocks_and_cover_every_pair_once(tiny_llama_path):
    worker = tiny_worker(tiny_llama_path)
    shapes = {n: tuple(w.shape) for n, w in worker.original.items()}
    shares = plan_tasks(stored_pairs(worker), shapes, 2)
    pairs = [[p for t in share for p in t.pairs] for share in shares]
    assert all(pairs)
    flat = [p for share in pairs for p in share]
    assert len(flat) == len(set(flat)) == len(stored_pairs(worker))
    assert {n.split(".")[2] for n, _ in pairs[0]} == {"0"}
    assert {n.split(".")[2] for n, _ in pairs[1]} == {"1"}


def test_a_second_worker_reads_the_database_and_computes_nothing(tiny_llama_path, tmp_path):
    first = tiny_worker(tiny_llama_path, tmp_path / "set")
    build_all(first)
    first.levels.flush()
    assert len(first.levels.built()) == len(stored_pairs(first))
    second = tiny_worker(tiny_llama_path, tmp_path / "set")
    loaded, rebuilt = load_stored_(second, stored_pairs(second))
    assert (loaded, rebuilt) == (len(stored_pairs(second)), 0)
    assert second.computed == []  # nothing recomputed
    for key in first.cache:
        if stored_option(key[1]):
            assert torch.equal(second.cache.get(key), first.cache.get(key))


def test_a_corrupted_or_truncated_variant_is_rebuilt_never_used(tiny_llama_path, tmp_path):
    first = tiny_worker(tiny_llama_path, tmp_path / "set")
    build_all(first)
    first.levels.flush()
    (bad_name, bad_option), (cut_name, cut_option) = stored_pairs(first)[:2]
    bad = first.levels.path(bad_name, bad_option)
    raw = bytearray(bad.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte in the tensor data
    bad.write_bytes(bytes(raw))
    cut = first.levels.path(cut_name, cut_option)
    cut.write_bytes(cut.read_bytes()[:-100])  # truncated
    second = tiny_worker(tiny_llama_path, tmp_path / "set")
    loaded, rebuilt = load_stored_(second, stored_pairs(second))
    assert rebuilt == 2 and loaded == len(stored_pairs(second)) - 2
    assert sorted(second.levels.rejected) == sorted([bad, cut])
    assert sorted(second.computed) == sorted([(bad_name, bad_option.label),
                                              (cut_name, cut_option.label)])
    for key in [(bad_name, bad_option), (cut_name, cut_option)]:
        assert torch.equal(second.cache.get(key), first.cache.get(key))
    second.levels.flush()  # the rebuilt files are whole again
    assert LevelDatabase(tmp_path / "set", second.levels.params).load(bad_name, bad_option) \
        is not None


def test_a_full_disk_is_a_one_line_error_and_leaves_no_partial_file(tiny_llama_path, tmp_path,
                                                                    monkeypatch):
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".tmp"):
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(level_db, "open", full_disk_open, raising=False)
    worker = tiny_worker(tiny_llama_path, tmp_path / "set")
    with pytest.raises(LevelDatabaseError) as info:  # raised by the next write, or the flush
        build_all(worker)
        worker.levels.flush()
    message = str(info.value)
    assert "disk is full" in message and "\n" not in message
    assert not list((tmp_path / "set").rglob("*.tmp"))
    assert not list((tmp_path / "set").rglob("*.safetensors"))


def test_an_unwritable_path_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(LevelDatabaseError, match=r"levels\.path: cannot write"):
        LevelDatabase(blocker / "levels").create({})


def test_rtn_variants_stay_in_memory(tiny_llama_path, tmp_path):
    worker = tiny_worker(tiny_llama_path, tmp_path / "set", ["int4-g32-asym", "int8-ch-sym",
                                                             "fp16", "nf4"])
    for name in worker.modules:
        for option in worker.space.genes[0].options:
            worker.variant(name, option)
    worker.levels.flush()
    assert worker.computed == [] and not list((tmp_path / "set").rglob("*.safetensors"))


GPTQ_GRID = ["int2-g32-asym-gptq", "int3-g64-sym-gptq", "int4-g32-sym-gptq", "int4-ch-asym-gptq",
             "int8-g64-asym-gptq", "int8-ch-sym-gptq"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_stored_variant_decodes_bit_for_bit_to_the_weight_the_trial_scored(
        tiny_llama_path, tmp_path, dtype):
    worker = tiny_worker(tiny_llama_path, tmp_path / "set", GPTQ_GRID, dtype)
    build_all(worker)  # batched GPTQ, as a level build
    name = "model.layers.1.self_attn.k_proj"
    worker.variant(name, QuantOption.from_label("int3-g32-asym-gptq"))  # the per-layer path
    worker.levels.flush()
    reader = LevelDatabase(tmp_path / "set", worker.levels.params)
    for (layer, option) in [*stored_pairs(worker), (name, QuantOption.from_label(
            "int3-g32-asym-gptq"))]:
        scored = worker.cache.get((layer, option))
        assert torch.equal(reader.load(layer, option), scored), (layer, option.label)
        enc, scored_dtype = reader.load_parts(layer, option)
        assert isinstance(enc, Encoded) and scored_dtype == scored.dtype
        low = level_codec.q_min(option)
        assert enc.values.min() >= low and enc.values.max() <= low + 2**option.bits - 1
        assert torch.equal(enc.values, enc.values.round())
        assert (enc.zero_point is None) == option.symmetric
        assert torch.equal(enc.dequantize(scored.dtype), scored)
        # the file holds the packed codes and the fp16 grid, not the dequantized weight
        rows, cols = scored.shape
        groups = cols // option.group_for(cols)
        grid = rows * groups * (2 + (0 if option.symmetric else 1))
        size = reader.path(layer, option).stat().st_size
        assert size < rows * cols * option.bits / 8 + grid + 1024
    assert sorted(worker.computed) == sorted([(n, o.label) for n, o in stored_pairs(worker)]
                                             + [(name, "int3-g32-asym-gptq")])


def test_a_file_of_the_old_layout_is_rebuilt_never_misread(tiny_llama_path, tmp_path):
    worker = tiny_worker(tiny_llama_path, tmp_path / "set", ["int4-g32-asym-gptq", "fp16"])
    name, option = stored_pairs(worker)[0]
    old = worker.levels.path(name, option)
    old.parent.mkdir(parents=True)
    weight = torch.zeros(tuple(worker.original[name].shape))  # a v1 file: the dense weight
    from safetensors.torch import save_file
    save_file({"weight": weight}, old, metadata={
        "sha256": level_codec.digest({"weight": weight}), "layer": name,
        "option": option.label, "format_version": "1"})
    assert not worker.levels.has(name, option)
    assert worker.levels.missing([(name, option)]) == [(name, option)]
    assert worker.levels.load(name, option) is None and not old.exists()  # removed
    assert worker.levels.rejected == [old]
    w = worker.variant(name, option)  # computed again, not the zeros
    assert not torch.equal(w, weight)
    worker.levels.flush()
    assert worker.levels.has(name, option)
    assert torch.equal(worker.levels.load(name, option), w)


def test_a_candidate_reads_the_stored_variants_it_uses_and_rebuilds_a_bad_one(tiny_llama_path,
                                                                              tmp_path):
    from mpsearch.spaces.space import Candidate

    first = tiny_worker(tiny_llama_path, tmp_path / "set")
    build_all(first)
    first.levels.flush()
    uniform = Candidate((0,) * len(first.space.genes))  # int3-g32-asym-gptq everywhere
    expected = first.evaluate(uniform).objective
    option = first.space.genes[0].options[0]
    bad_name = first.space.genes[0].layers[0].name
    bad = first.levels.path(bad_name, option)
    raw = bytearray(bad.read_bytes())
    raw[-3] ^= 0x55
    bad.write_bytes(bytes(raw))
    second = tiny_worker(tiny_llama_path, tmp_path / "set")
    assert second.evaluate(uniform).objective == expected  # the same weights, read or rebuilt
    stored = {key for key in second.cache if stored_option(key[1])}
    assert stored == {(layer.name, option) for g in second.space.genes for layer in g.layers}
    assert second.computed == [(bad_name, option.label)] and second.levels.rejected == [bad]
