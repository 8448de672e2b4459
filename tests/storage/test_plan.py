"""Plan export and checkpoint round trip: export → apply → load → re-score equals the trial's score.

The trial is scored by a real :class:`Worker` on a tiny Llama, recorded in the store (SQLite and
PostgreSQL), exported as a plan, applied to a fresh copy of the model, loaded back with
``from_pretrained`` and re-scored against the full-precision model on the same calibration.
"""

import json
import random

import pytest
import torch

from mpsearch.spaces import Budget, Candidate, parse_option
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.storage import CalibrationRecord, TrialStore
from mpsearch.storage.plan import PLAN_FORMAT, PlanError, build_plan, read_plan, write_plan
from mpsearch.workers.checkpoint import (
    PLAN_FILE,
    CheckpointError,
    rescore_checkpoint,
    scoring_setup,
    write_checkpoint,
)
from mpsearch.workers.config import ModelConfig
from mpsearch.workers.layers import get_weight, quantizable_modules
from mpsearch.workers.model_loading import inspect_model, load_model
from mpsearch.workers.worker import Worker

CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}
# Weights-only options (RTN integers, a float format, magnitude sparsity) ...
WEIGHT_ONLY = ("int2-g32-asym", "int4-g32-sym", "int8-ch-sym", "nf4", "int4-g32-asym+s50", "fp16")
# ... and options compressed from calibration inputs (GPTQ's Hessian, Wanda's norms).
CALIBRATED = ("int3-g32-asym-gptq", "int4-g32-asym+2:4-wanda", "int8-ch-sym")


def scored_study(store: TrialStore, model_path: str, labels: tuple[str, ...], seed: int = 0):
    """A study with one trial scored by a worker: returns (study, trial, worker)."""
    info = inspect_model(ModelConfig(name=model_path))
    options = tuple(parse_option(label) for label in labels)
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.", options)],
                        total_params=info.total_params)
    setup = scoring_setup(model_path, "auto", "kl", CALIBRATION)
    worker = Worker(setup, space)
    rng = random.Random(seed)
    # every option at least once, the rest at random
    choices = [i % len(options) for i in range(len(space.genes))]
    rng.shuffle(choices)
    candidate = Candidate(tuple(choices), origin="random")
    outcome = worker.evaluate(candidate)
    assert outcome.objective is not None and outcome.objective > 0, outcome
    spec = {"study": "tiny", "model": {"name": model_path, "kind": "auto", "dtype": "float32"},
            "calibration": CALIBRATION, "budget": {"avg_bits": 16.0}}
    study, _ = store.open_study("tiny", spec, spec, space, info.path, "kl", 10,
                                budget=Budget(16.0), calibration=CalibrationRecord(**CALIBRATION))
    cost = space.cost(candidate)
    number = store.start_trial(study.id, candidate, cost.avg_bits, cost.total_bytes, True, 0)
    store.finish_trial(study.id, number, outcome.objective, "w0", None, outcome.seconds)
    return study, store.trial("tiny", number), worker


def test_plan_names_every_layer_with_its_option_and_provenance(builder, tmp_path):
    study = builder.study()
    builder.add(study, (1, 3), 0.25)
    trial = builder.store.trial("s", 0)
    plan = build_plan(study, trial)
    assert plan["format"] == PLAN_FORMAT
    assert [(ly["name"], ly["label"], ly["effective_bits"]) for ly in plan["layers"]] == [
        ("blk.0.fc", "int4-g128-asym", 4.25), ("blk.1.fc", "fp16", 16.0)]
    first = plan["layers"][0]
    assert (first["format"], first["bits"], first["group_size"], first["symmetric"]) == (
        "int", 4, 128, False)
    assert first["sparsity"] == 0.0 and first["in_features"] == 128
    prov = plan["provenance"]
    assert (prov["study"], prov["trial"], prov["objective"], prov["objective_name"]) == (
        "s", 0, 0.25, "kl")
    assert prov["calibration"]["samples"] == 4 and prov["spec_hash"] == study.spec_hash
    assert prov["model"] == "m" and prov["mpsearch_version"]
    back = read_plan(write_plan(plan, tmp_path / "plan.json"))
    assert back.options == study.space.decode(trial.candidate)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not JSON"),
    ('{"format": "x"}', "not an mpsearch plan"),
    (json.dumps({"format": PLAN_FORMAT, "version": 99}), "plan version 99"),
    (json.dumps({"format": PLAN_FORMAT, "version": 1, "provenance": {}, "layers": []}),
     "non-empty list"),
    (json.dumps({"format": PLAN_FORMAT, "version": 1, "provenance": {},
                 "layers": [{"name": "a", "format": "int", "bits": 17}]}), "layer 'a': int bits"),
])
def test_bad_plan_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=match):
        read_plan(path)
    with pytest.raises(PlanError, match="cannot read plan"):
        read_plan(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="cannot write plan"):
        write_plan({}, tmp_path / "no" / "dir" / "plan.json")


@pytest.mark.slow
@pytest.mark.parametrize("labels", [WEIGHT_ONLY, CALIBRATED], ids=["weights-only", "calibrated"])
def test_export_apply_rescore_reproduces_the_stored_objective(store_url, tiny_llama_path, tmp_path,
                                                              labels):
    store = TrialStore(store_url)
    study, trial, worker = scored_study(store, tiny_llama_path, labels)
    plan = read_plan(write_plan(build_plan(study, trial), tmp_path / "plan.json"))
    prov = plan.provenance
    setup = scoring_setup(prov["model"], prov["model_kind"], prov["objective_name"],
                          prov["calibration"], prov["dtype"])
    out = write_checkpoint(prov["model"], plan.options, tmp_path / "ckpt", plan=plan.data,
                           setup=setup)
    assert json.loads((out / PLAN_FILE).read_text())["provenance"]["trial"] == trial.number

    # the saved weights are exactly the ones the worker scored
    loaded = load_model(str(out), "causal-lm", "float32", "cpu")
    modules = quantizable_modules(loaded)
    for name, option in plan.options.items():
        assert torch.equal(get_weight(modules[name]), worker.variant(name, option).cpu()), name
    original = load_model(tiny_llama_path, "causal-lm", "float32", "cpu")
    untouched = quantizable_modules(original)["lm_head"]
    assert torch.equal(get_weight(modules["lm_head"]), get_weight(untouched))  # not in the plan

    value = rescore_checkpoint(out, setup, prov["samples"])
    assert value == pytest.approx(trial.objective, rel=1e-6, abs=1e-9)
    store.close()


def test_checkpoint_refuses_bad_targets(tiny_llama_path, tmp_path):
    options = {"model.layers.0.mlp.up_proj": parse_option("int4-g32-asym")}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        write_checkpoint(tiny_llama_path, options, tmp_path / "full")
    with pytest.raises(CheckpointError, match="no quantizable layer 'nope'"):
        write_checkpoint(tiny_llama_path, {"nope": parse_option("fp16")}, tmp_path / "a")
    with pytest.raises(CheckpointError, match="needs calibration inputs"):
        write_checkpoint(tiny_llama_path, {"model.layers.0.mlp.up_proj":
                                           parse_option("int4-g32-asym-gptq")}, tmp_path / "b")
