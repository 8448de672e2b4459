"""The level database built across two Ray workers by the product's driver: each GPTQ variant
computed once, reused by a later study, completed when a worker dies while building, equal to a
single worker's; bad level-database paths are one-line errors that leave stored trials alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray
import torch
import yaml

from mpsearch.cluster.job import prepare, run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.cluster.warmup import level_set
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.workers.actor import WorkerActor
from mpsearch.workers.level_db import LevelDatabase

pytestmark = pytest.mark.slow

OPTIONS = ["int3-g32-asym-gptq", "int4-g32-asym-gptq", "int4-g32-asym", "fp16"]


def spec_fields(study, model, tmp_path, count=2, levels=None, **fields):
    return {
        "study": study,
        "model": {"name": model},
        "calibration": {"samples": 6, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.", "options": OPTIONS}],
                  "tie": [r"layers\.(\d+)\.self_attn\.(?:q|k|v)_proj",
                          r"layers\.(\d+)\.mlp\.(?:gate|up)_proj"]},
        "budget": {"avg_bits": 4.0},
        "searcher": {"name": "hybrid", "params": {"proxy": True, "seeds": 2}},
        "evaluations": 12,
        "workers": {"count": count, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
        **({"levels": {"path": str(levels)}} if levels is not None else {}),
        **fields,
    }


class Phases:
    """A SetupListener that remembers which phases ran."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def phase(self, key, text, total):
        self.keys.append(key)

    def advance(self, key, n=1):
        pass

    def finish(self, key):
        pass


def level_db_of(spec) -> LevelDatabase:
    job = prepare(spec)
    root = Path(spec.levels.path) if spec.levels.path else Path(
        spec.storage.url.removeprefix("sqlite:///") + ".levels")
    folder, _ = level_set(root, job.model.path, spec.model.dtype, job.texts, spec.calibration)
    return LevelDatabase(folder, {"percdamp": 0.01, "block_size": 128})


def stored_pairs(spec):
    space = prepare(spec).space
    return sorted((o.label, layer.name) for g in space.genes for layer in g.layers
                  for o in g.options if o.rounding == "gptq")


def test_each_variant_is_built_once_across_workers_reused_later_and_equal_to_one_worker(
        ray_session, tiny_llama_path, tmp_path):
    spec = parse_spec(spec_fields("first", tiny_llama_path, tmp_path))
    store = TrialStore(spec.storage.url)
    phases = Phases()
    first = run_job(spec, store, on_phase=phases)
    assert first.stats.completed == 12
    db = level_db_of(spec)
    built = db.built()
    counts = Counter((label, layer) for _, label, layer in built)
    assert sorted(counts) == stored_pairs(spec) and set(counts.values()) == {1}  # once each
    assert len({writer for writer, _, _ in built}) == 2  # both workers had a share
    assert {"model", "reference", "statistics", "level:int3-g32-asym-gptq", "proxies",
            "search"} <= set(phases.keys)

    # a second study on the same model and calibration computes nothing
    again = Phases()
    second = run_job(parse_spec(spec_fields("second", tiny_llama_path, tmp_path)), store,
                     on_phase=again)
    assert second.stats.completed == 12
    assert db.built() == built
    assert not {k for k in again.keys if k.startswith("level:") or k in ("statistics", "proxies")}

    # one worker with the same seed builds the same variants and scores the same baselines
    single_spec = parse_spec(spec_fields("single", tiny_llama_path, tmp_path, count=1,
                                         levels=tmp_path / "single-levels"))
    run_job(single_spec, store)
    single_db = level_db_of(single_spec)
    assert len(single_db.built()) == len(built)
    for (label, layer) in stored_pairs(spec):
        option = next(o for g in first.study.space.genes for o in g.options if o.label == label)
        assert torch.equal(db.load(layer, option), single_db.load(layer, option))
        assert db.load_proxy(layer, option) == single_db.load_proxy(layer, option)
    objective = {name: {t.choices: t.objective for t in store.trials(name)
                        if t.status == COMPLETE} for name in ("first", "single")}
    shared = set(objective["first"]) & set(objective["single"])
    assert len(shared) >= 4  # the uniform baselines at least
    assert all(objective["first"][c] == objective["single"][c] for c in shared)


@ray.remote
class DiesWhileBuilding(WorkerActor.__ray_actor_class__):  # type: ignore[name-defined,misc]
    """Worker w1 kills its process in its first build step (once: a marker file remembers)."""

    def build(self, task):
        marker = Path(self.setup.level_db) / ".killed-w1"
        if self.label.startswith("w1@") and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().build(task)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_worker_killed_while_building_is_replaced_and_the_database_completes(
        ray_session, tiny_llama_path, tmp_path):
    spec = parse_spec(spec_fields("killed", tiny_llama_path, tmp_path))
    store = TrialStore(spec.storage.url)
    result = run_job(spec, store, executor_options={"actor_cls": DiesWhileBuilding})
    assert result.stats.completed == 12
    db = level_db_of(spec)
    assert (db.dir / ".killed-w1").exists()  # w1 did die in its build
    built = db.built()
    counts = Counter((label, layer) for _, label, layer in built)
    assert sorted(counts) == stored_pairs(spec) and set(counts.values()) == {1}
    writers = {writer for writer, _, _ in built}
    assert len(writers) == 2 and all(w.split(":")[-1] != (db.dir / ".killed-w1").read_text()
                                     for w in writers)  # the dead w1 wrote nothing; its
    # replacement did its whole share, w0 only its own
    assert db.missing([(layer, o) for g in result.study.space.genes for layer in
                       [x.name for x in g.layers] for o in g.options]) == []


def test_bad_level_database_paths_are_one_line_errors_that_keep_stored_trials(
        ray_session, tiny_llama_path, tmp_path, cli_inprocess):
    spec = parse_spec(spec_fields("kept", tiny_llama_path, tmp_path, evaluations=5))
    store = TrialStore(spec.storage.url)
    run_job(spec, store)
    before = store.trials("kept")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_fields("kept", tiny_llama_path, tmp_path,
                                               levels=blocker / "levels", evaluations=8)))
    # the CLI's entry point in this process, on the session's Ray instance
    res = cli_inprocess.invoke("run", str(path))
    cli_inprocess.assert_one_line_error(res, "levels.path: cannot write")
    assert store.trials("kept") == before  # nothing lost, nothing added


def test_a_database_made_for_other_calibration_data_is_not_reused(ray_session, tiny_llama_path,
                                                                  tmp_path):
    spec = parse_spec(spec_fields("calib-a", tiny_llama_path, tmp_path, evaluations=5))
    other = parse_spec(spec_fields("calib-b", tiny_llama_path, tmp_path, evaluations=5,
                                   calibration={"samples": 6, "seq_len": 16, "offset": 6}))
    store = TrialStore(spec.storage.url)
    run_job(spec, store)
    phases = Phases()
    run_job(other, store, on_phase=phases)
    a, b = level_db_of(spec), level_db_of(other)
    assert a.dir != b.dir
    assert len(a.built()) == len(b.built()) == len(stored_pairs(spec))  # built anew
    assert "level:int3-g32-asym-gptq" in phases.keys
    assert a.manifest()["calibration"]["offset"] == 0 and b.manifest()["calibration"]["offset"] == 6


_SHOW_AND_LIST_IMPORTS = """
import json, sys
from mpsearch.cluster.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print("imported:", json.dumps([m for m in ("torch", "ray", "transformers") if m in sys.modules]))
"""


def test_levels_builds_the_database_ahead_and_show_lists_it_without_torch(
        ray_session, tiny_llama_path, tmp_path):
    from typer.testing import CliRunner

    from mpsearch.cluster.cli import app

    path = tmp_path / "ahead.yaml"
    path.write_text(yaml.safe_dump(spec_fields("ahead", tiny_llama_path, tmp_path)))
    result = CliRunner().invoke(app, ["levels", str(path)])
    assert result.exit_code == 0, (result.output, result.exception)
    spec = parse_spec(spec_fields("ahead", tiny_llama_path, tmp_path))
    db = level_db_of(spec)
    built = db.built()
    counts = Counter((label, layer) for _, label, layer in built)
    assert sorted(counts) == stored_pairs(spec) and set(counts.values()) == {1}
    assert len({writer for writer, _, _ in built}) == 2  # spread over both workers
    assert not (tmp_path / "store.db").exists()  # building needs no store

    show = subprocess.run([sys.executable, "-c", _SHOW_AND_LIST_IMPORTS, "levels", str(path),
                           "--show"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert show.stdout.rsplit("imported:", 1)[1].strip() == "[]"
    layers = len(stored_pairs(spec)) // 2
    rows = [ln for ln in show.stdout.splitlines() if "-gptq" in ln]
    assert len(rows) == 2 and all(f"{layers}/{layers}" in row for row in rows), show.stdout

    # a study on the same model and calibration then computes nothing
    phases = Phases()
    run_job(spec, TrialStore(spec.storage.url), on_phase=phases)
    assert db.built() == built
    assert not {k for k in phases.keys if k.startswith("level:") or k == "statistics"}


def test_levels_bad_input_is_one_line_and_starts_nothing(tiny_llama_path, tmp_path,
                                                         cli_inprocess):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    cases = [(spec_fields("bad", tiny_llama_path, tmp_path, levels=blocker / "levels"),
              "levels.path: cannot write"),
             (spec_fields("bad", str(tmp_path / "no-model"), tmp_path), "no-model")]
    for fields, message in cases:  # the CLI's entry point, in this process
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(fields))
        cli_inprocess.assert_one_line_error(cli_inprocess.invoke("levels", str(path)), message)
    assert not (tmp_path / "store.db").exists()
