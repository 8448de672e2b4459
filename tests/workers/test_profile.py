"""Sensitivity profiles: measured values and proxies, stored rows, reuse by a second study."""

import pytest
import torch
import yaml

from mpsearch.cluster.job import prepare, profile_key, worker_setup
from mpsearch.cluster.profiling import run_profile
from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces.options import QuantOption
from mpsearch.storage.profiles import ProfileKey, calibration_fingerprint, load_profile, save_profile
from mpsearch.storage.store import TrialStore
from mpsearch.workers.gptq import output_error
from mpsearch.workers.profile import ProfileMeasurement, measure_profile, profile_pairs
from mpsearch.workers.worker import Worker

OPTIONS = ["int2-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]


def spec_data(model: str, db: str, study: str = "p1", samples: int = 4) -> dict:
    return {"study": study, "model": {"name": model},
            "calibration": {"samples": samples, "seq_len": 16, "batch_size": 2},
            "space": {"layers": [{"match": r"layers\.0\.mlp\.", "options": OPTIONS}]},
            "budget": {"avg_bits": 8}, "workers": {"count": 1, "cpus": 1},
            "storage": {"url": db}}


@pytest.fixture
def job(tiny_llama_path, tmp_path):
    return prepare(parse_spec(spec_data(tiny_llama_path, f"sqlite:///{tmp_path / 's.db'}")))


def in_process(job, calls: list):
    """A Measure that runs in this process and counts the pairs it is asked to measure."""
    worker = Worker(worker_setup(job), job.space)

    def measure(pairs):
        calls.append(len(pairs))
        yield "local", measure_profile(worker, pairs)
    return measure


@pytest.mark.slow
def test_profile_values_and_proxies_order_by_precision(job):
    worker = Worker(worker_setup(job), job.space)
    rows = measure_profile(worker, profile_pairs(job.space))
    assert len(rows) == len(job.space.genes) * len(OPTIONS)
    assert all(r.error is None for r in rows)
    assert all(o is None for o in worker.current.values())  # left at full precision
    for gene in job.space.genes:
        by = {r.option.label: r for r in rows if r.layer == gene.name}
        assert by["int2-g32-asym"].delta > by["int4-g32-asym"].delta > by["int8-g32-asym"].delta
        assert abs(by["fp16"].delta) < 1e-6
        assert (by["int2-g32-asym"].weight_error > by["int4-g32-asym"].weight_error
                > by["int8-g32-asym"].weight_error)
        assert by["int2-g32-asym"].hessian_error > by["int4-g32-asym"].hessian_error > 0


@pytest.mark.slow
def test_hessian_proxy_is_the_layers_output_error_per_row(job):
    worker = Worker(worker_setup(job), job.space)
    name = job.space.layers[0].name
    option = QuantOption("int", 3, 32)
    X = []
    handle = worker.modules[name].register_forward_hook(lambda m, a, o: X.append(a[0]))
    with torch.inference_mode():
        for batch in worker.batches:
            worker.model(**batch)
            X[-1] = X[-1][batch["attention_mask"].bool()]
    handle.remove()
    X = torch.cat(X)
    (row,) = measure_profile(worker, [(name, option)])
    W, W_hat = worker.original[name], worker.variant(name, option)
    assert row.hessian_error == pytest.approx(2 * output_error(X, W, W_hat) / len(X), rel=1e-3)


@pytest.mark.slow
def test_second_study_reuses_stored_rows_instead_of_measuring(job, tiny_llama_path, tmp_path):
    store = TrialStore(job.spec.storage.url)
    calls: list[int] = []
    first = run_profile(job, store, in_process(job, calls))
    n = len(job.space.genes) * len(OPTIONS)
    assert (first.measured, first.reused, calls) == (n, 0, [n])
    # another study (new name, other budget) over the same model and calibration data
    data = spec_data(tiny_llama_path, job.spec.storage.url, study="p2")
    data["budget"] = {"avg_bits": 5}
    second_job = prepare(parse_spec(data))
    second = run_profile(second_job, store, in_process(second_job, calls))
    assert (second.measured, second.reused) == (0, n)
    assert calls == [n]  # the measure function was not called again
    assert second.rows == first.rows
    # other calibration data is another profile
    third = run_profile(job, store, in_process(job, calls), samples=2)
    assert third.measured == n and profile_key(job, 2) != profile_key(job)


def test_profile_rows_round_trip_and_are_stored_once(store_url):
    store = TrialStore(store_url)
    key = ProfileKey("some/model", calibration_fingerprint(["a b c"], 16), "kl")
    opt = QuantOption("int", 4, 32, True, rounding="gptq")
    rows = [ProfileMeasurement("layers.0.q", opt, 0.5, 0.4, 1.0, 2.0, 0.1),
            ProfileMeasurement("layers.0.k", opt, None, None, None, None, 0.1, "boom")]
    assert save_profile(store, key, rows, worker="w0") == 1  # the failed row is not stored
    assert save_profile(store, key, rows, worker="w1") == 0  # nor the same row twice
    loaded = load_profile(store, key)
    assert list(loaded) == [("layers.0.q", opt.label)]
    rec = loaded[("layers.0.q", opt.label)]
    assert (rec.option, rec.value, rec.delta, rec.hessian_error, rec.worker) == (opt, 0.5, 0.4,
                                                                                 2.0, "w0")
    assert load_profile(store, ProfileKey("some/model", key.calibration, "embedding_distortion")) == {}
    assert calibration_fingerprint(["a b c"], 16) != calibration_fingerprint(["a b c"], 17)
    store.close()


@pytest.mark.slow
def test_cli_profiles_on_ray_workers_then_reuses(ray_session, tiny_llama_path, tmp_path):
    from typer.testing import CliRunner

    from mpsearch.cluster.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(tiny_llama_path, f"sqlite:///{tmp_path / 'c.db'}")))
    runner = CliRunner()
    first = runner.invoke(app, ["profile", str(spec)])
    assert first.exit_code == 0, first.output
    text = " ".join(first.output.split())  # rich wraps lines
    assert "0 rows reused, 12 measured, 0 failed" in text  # 3 MLP layers × 4 options
    assert "int2-g32-asym" in text
    second = runner.invoke(app, ["profile", str(spec)])
    assert second.exit_code == 0, second.output
    assert "12 rows reused, 0 measured" in " ".join(second.output.split())
