"""budget.latency through the job: the table measured by Ray tasks once, stored, reused; the
search meets it; a device with no table and no worker to measure it is one line, nothing stored."""

from __future__ import annotations

import pytest
import yaml

from mpsearch.cluster.job import prepare
from mpsearch.cluster.latency import with_latency
from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces import parse_option
from mpsearch.spaces.errors import BudgetError
from mpsearch.spaces.latency import LatencyEntry, Timing, gemm_points
from mpsearch.storage import TrialStore
from mpsearch.storage.latency import (
    LatencyKey,
    RestRecord,
    latency_table,
    layers_fingerprint,
    save_entries,
    save_rest,
    stored_devices,
)


def fields(tiny_llama_path, tmp_path, study, latency, **budget):
    return {
        "study": study,
        "model": {"name": tiny_llama_path},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.",
                              "options": ["int2-g32-asym", "int4-g32-asym", "int8-g32-asym",
                                          "int8-ch-sym", "fp16"]}]},
        "budget": {**budget, "latency": latency},
        "searcher": {"name": "evolutionary", "params": {"offspring": 4}},
        "evaluations": 12,
        "workers": {"count": 2, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / 'study.db'}"},
    }


def test_a_named_device_without_a_table_is_one_line_and_nothing_is_stored(
        tiny_llama_path, tmp_path, cli_inprocess):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(fields(tiny_llama_path, tmp_path, "h200", {
        "ms": 40, "batch": 8, "tokens": 1, "device": "NVIDIA H200"}, avg_bits=6.0)))
    res = cli_inprocess.invoke("run", str(spec))
    cli_inprocess.assert_one_line_error(
        res, "budget.latency: no latency table of NVIDIA H200 (float32, batch 8 × 1 tokens",
        "(no such file)", "the workers run on CPUs", "run once with workers on NVIDIA H200")
    assert not (tmp_path / "study.db").exists()


def test_a_searched_embedding_with_a_latency_budget_is_one_line_and_nothing_is_stored(
        tiny_llama_path, tmp_path, cli_inprocess):
    f = fields(tiny_llama_path, tmp_path, "lookup", {"ms": 40}, avg_bits=6.0)
    f["space"]["layers"][0]["match"] = r"embed_tokens|layers\.\d+\."
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(f))
    res = cli_inprocess.invoke("run", str(spec))
    cli_inprocess.assert_one_line_error(
        res, "budget.latency: layer model.embed_tokens is an embedding", "does not time")
    assert not (tmp_path / "study.db").exists()


def test_a_stored_table_of_a_named_device_serves_workers_of_another(
        tiny_llama_path, tmp_path, store_url):
    # the H200's table stored (as a GPU run would), searched for on CPU workers: no Ray, no
    # measuring; on SQLite and PostgreSQL
    spec = parse_spec({**fields(tiny_llama_path, tmp_path, "h200", {
        "ms": 40, "batch": 8, "tokens": 1, "device": "NVIDIA H200"}, avg_bits=6.0),
        "storage": {"url": store_url}})
    job = prepare(spec)
    key = LatencyKey("NVIDIA H200", "torch 2.11.0+cu130, cuda 13.0", "float32")
    entries = [LatencyEntry(p, 8, 1, Timing(0.001 * (i + 1), 0, 0, 0, 0, 50, True), "op", True)
               for i, p in enumerate(gemm_points(job.space))]
    store = TrialStore(store_url)
    save_entries(store, key, entries)
    save_rest(store, key, job.model.path, layers_fingerprint(job.space.layers), 8, 1,
              RestRecord(2.5, 2.4, 2.6, 50))
    (row,) = with_latency(job, store_url).budget.extra
    table = latency_table(store, key, job.model.path, job.space.layers, 8, 1)
    assert table is not None and row.costs == table.gene_costs(job.space)
    assert row.constant == 2.5 and row.limit == 40
    # another batch has no table: refused in one line (the workers run on CPUs)
    other = parse_spec({**spec.model_dump(mode="json"), "budget": {
        "avg_bits": 6.0, "latency": {"ms": 40, "batch": 4, "device": "NVIDIA H200"}}})
    with pytest.raises(BudgetError, match="no latency table of NVIDIA H200 .*batch 4"):
        with_latency(prepare(other), store_url)


def test_workers_with_a_gpu_on_a_cluster_without_one_is_one_line(
        tiny_llama_path, tmp_path, ray_session, cli_inprocess):
    spec = tmp_path / "gpu.yaml"
    f = fields(tiny_llama_path, tmp_path, "gpu", {"ms": 40}, avg_bits=6.0)
    spec.write_text(yaml.safe_dump({**f, "workers": {"count": 1, "cpus": 1, "gpus": 1}}))
    res = cli_inprocess.invoke("run", str(spec))
    cli_inprocess.assert_one_line_error(
        res, "budget.latency: no worker can measure the latency table",
        "no GPU for workers.gpus=1")
    assert not (tmp_path / "study.db").exists()


def test_the_table_is_measured_once_stored_and_the_search_meets_it(
        tiny_llama_path, tmp_path, ray_session, cli_inprocess):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    lat = {"ms": 1e6, "batch": 2, "tokens": 1}
    said: list[str] = []
    job = with_latency(prepare(parse_spec(fields(tiny_llama_path, tmp_path, "a", lat))), url,
                       say=said.append)
    assert len(said) == 2 and f"measuring {len(gemm_points(job.space))} GEMM entries" in said[0]
    assert "measuring the rest of the forward pass" in said[1]
    store = TrialStore(url)
    (key,) = stored_devices(store)
    assert key.device.startswith("cpu ") and key.dtype == "float32"
    table = latency_table(store, key, job.model.path, job.space.layers, 2, 1)
    assert table is not None and not table.missing(job.space)
    assert len(table.entries) == len(gemm_points(job.space))
    (row,) = job.budget.extra
    assert row.name == "latency" and row.constant == table.rest_ms
    assert row.costs == table.gene_costs(job.space)

    # a binding budget within 6 bits, in a second study: the stored table is reused. Between the
    # uniform int2 and int4 configurations' latencies: one of the two meets it, the other not.
    space = job.space
    low, mid = (table.candidate_ms(space, space.uniform(parse_option(o)))
                for o in ("int2-g32-asym", "int4-g32-asym"))
    ms = (low + mid) / 2
    spec = tmp_path / "b.yaml"
    b = fields(tiny_llama_path, tmp_path, "b", {**lat, "ms": ms}, avg_bits=6.0)
    spec.write_text(yaml.safe_dump({**b, "workers": {"count": 1, "cpus": 1}}))
    res = cli_inprocess.invoke("run", str(spec))
    assert res.code == 0, res.stderr
    assert "measuring" not in res.stderr
    trials = [t for t in TrialStore(url).trials("b") if t.status == "complete"]
    assert len(trials) >= 12
    for t in trials:
        meets = table.candidate_ms(space, t.candidate) <= ms + 1e-9 and t.avg_bits <= 6.0 + 1e-9
        assert t.feasible == meets
        assert meets or t.origin == "uniform", t  # the search proposes within the budget only
    assert [t for t in trials if t.origin != "uniform"]
    slower = max(("int2-g32-asym", "int4-g32-asym"), key=lambda o: table.candidate_ms(
        space, space.uniform(parse_option(o))))
    assert not next(t for t in trials if t.candidate == space.uniform(parse_option(slower))
                    ).feasible  # the latency binds where the bits would not

    # below the fastest configuration: one line naming the minimum, no study stored
    fastest = row.least()
    spec.write_text(yaml.safe_dump(fields(tiny_llama_path, tmp_path, "c",
                                          {**lat, "ms": fastest * 0.5})))
    res = cli_inprocess.invoke("run", str(spec))
    cli_inprocess.assert_one_line_error(res, "latency", "below the smallest configuration",
                                        f"{fastest:.6g} ms")
    assert "c" not in [s.name for s in TrialStore(url).studies()]
