"""Exports after a study read the GPTQ variants from its level database: `export` and `apply`
(compressed-tensors and GGUF) run no GPTQ and gather no Hessian (counted), and write the same
bytes as an export that computes everything again."""

from dataclasses import replace

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from mpsearch.cluster.cli import app
from mpsearch.cluster.levels import level_set
from mpsearch.spaces import Budget, Candidate, parse_option
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.storage import CalibrationRecord, TrialStore
from mpsearch.workers import registry
from mpsearch.workers.checkpoint import scoring_setup
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.level_db import LevelDatabase
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import Worker, level_database

pytestmark = pytest.mark.slow

# Q4_0 and Q8_0 in GGUF too; GPTQ in activation order is built apart (its own factors); GPTQ
# on clipped grids is stored and read back like the others
LABELS = ("int4-g32-sym-gptq", "int8-g32-sym", "fp16", "int4-g32-sym-gptq-act",
          "int4-g32-sym-clip-gptq")
CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 16, "batch_size": 4}


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def counted(monkeypatch):
    """Counts every per-layer GPTQ and every Hessian pass (the work an export must not redo)."""
    calls = {"gptq": 0, "statistics": 0}
    real_gptq, real_stats = registry.gptq_quantize, Worker.gather_statistics

    def gptq(*args, **kwargs):
        calls["gptq"] += 1
        return real_gptq(*args, **kwargs)

    def stats(self, *args, **kwargs):
        calls["statistics"] += 1
        return real_stats(self, *args, **kwargs)

    monkeypatch.setattr(registry, "gptq_quantize", gptq)
    monkeypatch.setattr(Worker, "gather_statistics", stats)
    return calls


def study_with_levels(model_path, tmp_path) -> str:
    """A store with one trial a worker scored, its GPTQ variants in the level database beside
    the store (where `mpsearch run` keeps them): the store's URL."""
    info = inspect_model(ModelConfig(name=model_path))
    options = tuple(parse_option(o) for o in LABELS)
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.", options)],
                        total_params=info.total_params)
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    setup = scoring_setup(model_path, "auto", "kl", CALIBRATION)
    folder, manifest = level_set(tmp_path / "tiny.db.levels", setup.model_path, setup.dtype,
                                 setup.texts, CalibrationConfig(**CALIBRATION))
    setup = replace(setup, level_db=str(folder))
    level_database(setup).create(manifest)
    worker = Worker(setup, space)
    choices = tuple(i % len(options) for i in range(len(space.genes)))
    value = worker.evaluate(Candidate(choices)).objective
    worker.levels.flush()
    assert len(worker.levels.built()) == sum(1 for c in choices if options[c].gptq)
    spec = {"model": {"name": model_path, "kind": "auto", "dtype": "float32"},
            "calibration": CALIBRATION, "budget": {"avg_bits": 16}}
    store = TrialStore(url)
    study, _ = store.open_study("tiny", spec, spec, space, info.path, "kl", 10,
                                budget=Budget(16), calibration=CalibrationRecord(**CALIBRATION))
    cost = space.cost(Candidate(choices))
    n = store.start_trial(study.id, Candidate(choices), cost.avg_bits, cost.total_bytes, True, 0)
    store.finish_trial(study.id, n, value, "w0", None, 0.1)
    store.close()
    return url


def test_exports_after_a_study_read_gptq_from_the_level_database(tiny_llama_path, tmp_path,
                                                                  counted):
    url = study_with_levels(tiny_llama_path, tmp_path)
    counted.update(gptq=0, statistics=0)
    ok("export", "--study", "tiny", "--db", url, "--format", "compressed-tensors",
       "--out", tmp_path / "ct")
    ok("export", "--study", "tiny", "--db", url, "--out", tmp_path / "plan.json")
    ok("apply", tmp_path / "plan.json", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert counted == {"gptq": 0, "statistics": 0}  # nothing recomputed

    # the same plan with an empty level database: GPTQ again, and the very same checkpoint
    (tmp_path / "empty").mkdir()
    ok("apply", tmp_path / "plan.json", "--format", "compressed-tensors", "--out",
       tmp_path / "ct-again", "--levels", tmp_path / "empty")
    assert counted["gptq"] > 0 and counted["statistics"] > 0
    stored, again = (load_file(tmp_path / d / "model.safetensors") for d in ("ct", "ct-again"))
    assert stored.keys() == again.keys()
    assert all(stored[k].equal(again[k]) for k in stored)
    assert any(k.endswith("weight_packed") for k in stored)


def test_the_public_reader_hands_back_codes_scales_and_zero_points(tiny_llama_path, tmp_path):
    study_with_levels(tiny_llama_path, tmp_path)
    (folder,) = [p for p in (tmp_path / "tiny.db.levels").iterdir() if p.is_dir()]
    db = LevelDatabase(folder, {"percdamp": 0.01, "block_size": 128})
    option = parse_option("int4-g32-sym-gptq")
    name = "model.layers.0.self_attn.q_proj"
    enc, dtype = db.load_parts(name, option)
    rows, cols = enc.values.shape
    assert enc.scale.shape == (rows, cols // 32) and enc.zero_point is None
    assert enc.values.min() >= -8 and enc.values.max() <= 7
    assert db.load(name, option).equal(enc.dequantize(dtype))
