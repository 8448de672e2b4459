"""The latency budget of a job: its device's table, read from the store or measured on workers.

``budget.latency: {ms, batch, tokens}`` becomes one additive row of the budget
(:meth:`~mpsearch.spaces.latency.LatencyTable.constraint`: Σ per-layer GEMM times + the rest of
the forward pass ≤ ms), added to every budget point of the job before the study is opened, so
every strategy meets it as it meets any other row. The table comes from the store when it holds
one for the workers' device (key: device name, library versions, dtype; ``storage/latency.py``);
otherwise the missing entries are measured by Ray tasks with the workers' resources, spread in
chunks over ``workers.count`` of them (and the rest of the forward pass by one that loads the
model), and stored as they arrive, so a later study on that device reuses them.

``budget.latency.device`` names the device to budget for; its stored table is then used by
workers of any kind, and a device with no stored table that the workers are not is refused
(one line, before anything is stored).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mpsearch.spaces.budget import Budget
from mpsearch.spaces.errors import BudgetError
from mpsearch.spaces.latency import LATENCY_ROW, LatencyTable, gemm_points
from mpsearch.storage.errors import StoreError, mask_url
from mpsearch.storage.latency import (
    LatencyKey,
    RestRecord,
    latency_table,
    layers_fingerprint,
    load_entries,
    load_rest,
    save_entries,
    save_rest,
    stored_devices,
)
from mpsearch.storage.store import TrialStore, normalize_url

from .executor import first_line
from .job import PreparedJob, connect_for, worker_setup

CHUNK = 16  # GEMM points per task: enough to amortize a task, small enough to spread


def with_latency(job: PreparedJob, store_url: str, address: str | None = None,
                 say: Callable[[str], None] | None = None) -> PreparedJob:
    """``job`` with its latency budget as a row of every budget point (a no-op without one).

    Raises:
        BudgetError: the named device has no stored table and the workers cannot measure it,
            no worker can be placed, or the budget is below the fastest configuration.
    """
    cfg = job.spec.budget.latency
    if cfg is None or any(r.name == LATENCY_ROW for r in job.budget.extra):
        return job
    table = _table(job, store_url, address, say or (lambda _line: None))
    row = table.constraint(job.space, cfg.ms)

    def add(point: Budget) -> Budget:
        return replace(point, extra=(*point.extra, row))

    frontier = tuple(add(b) for b in job.frontier)
    budget = add(job.budget)
    for i, point in enumerate(frontier or (budget,)):
        job.space.check_budget(point, "budget" if not frontier else
                               f"frontier budget {i + 1} of {len(frontier)},")
    return replace(job, budget=budget, frontier=frontier)


def _existing_store(url: str) -> TrialStore | None:
    """The store at ``url``; None for a SQLite file that does not exist yet (it is not created
    to look for a table: a refused budget leaves no file behind)."""
    if not normalize_url(url).startswith("sqlite"):
        return TrialStore(url)
    try:
        return TrialStore(url, create=False)
    except StoreError:
        return None


def _dtype(job: PreparedJob) -> str:
    return job.spec.model.dtype


def _stored_for(store: TrialStore | None, job: PreparedJob, device: str) -> LatencyTable | None:
    """A complete stored table of ``device`` (any library versions, newest key first)."""
    if store is None:
        return None
    cfg = job.spec.budget.latency
    assert cfg is not None
    for key in reversed(stored_devices(store)):
        if key.device != device or key.dtype != _dtype(job):
            continue
        table = latency_table(store, key, job.model.path, job.space.layers, cfg.batch, cfg.tokens)
        if table is not None and not table.missing(job.space):
            return table
    return None


def _table(job: PreparedJob, url: str, address: str | None,
           say: Callable[[str], None]) -> LatencyTable:
    spec, cfg = job.spec, job.spec.budget.latency
    assert cfg is not None
    store = _existing_store(url)
    setup = worker_setup(job)
    if cfg.device is not None:
        stored = _stored_for(store, job, cfg.device)
        if stored is not None:
            return stored
        if setup.device == "cpu" and not cfg.device.startswith("cpu"):
            _no_table(cfg.device, job, url, "the workers run on CPUs")
    connect_for(spec, address)
    import ray

    w = spec.workers
    gpus = w.gpus if setup.device == "cuda" else 0
    if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
        raise BudgetError(f"budget.latency: no worker can measure the latency table: the Ray "
                          f"cluster has no GPU for workers.gpus={w.gpus:g}; give the cluster a "
                          "GPU or set budget.latency.device to a device whose table is stored")
    from mpsearch.workers import latency as measure

    threads = setup.threads or 1
    remote = ray.remote(num_cpus=w.cpus, num_gpus=gpus)
    key = _get(ray.get, remote(measure.probe_device).remote(setup.device, threads))
    if cfg.device is not None and key.name != cfg.device:
        _no_table(cfg.device, job, url, f"the workers run on {key.name}")
    lkey = LatencyKey(key.name, key.versions, _dtype(job))
    store = store or TrialStore(url)
    have = load_entries(store, lkey, cfg.batch, cfg.tokens)
    missing = [p for p in gemm_points(job.space) if p not in have]
    layers = job.space.layers
    fp = layers_fingerprint(layers)
    refs: dict[Any, str] = {}
    if missing:
        size = max(1, min(CHUNK, math.ceil(len(missing) / w.count)))
        say(f"latency table of {key.name}: measuring {len(missing)} GEMM entries at batch "
            f"{cfg.batch} × {cfg.tokens} tokens on {min(w.count, math.ceil(len(missing) / size))} "
            "workers")
        for i in range(0, len(missing), size):
            ref = remote(measure.measure_on_worker).remote(
                missing[i:i + size], cfg.batch, cfg.tokens, setup.device, _dtype(job), threads)
            refs[ref] = "entries"
    if load_rest(store, lkey, job.model.path, fp, cfg.batch, cfg.tokens) is None:
        say(f"latency table of {key.name}: measuring the rest of the forward pass")
        refs[remote(measure.rest_on_worker).remote(
            job.model.path, job.model.kind, _dtype(job), setup.device,
            {ly.name: ly.out_features for ly in layers}, cfg.batch, cfg.tokens, threads)] = "rest"
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        worker_key, value = _get(ray.get, ready[0])
        at = LatencyKey(worker_key.name, worker_key.versions, _dtype(job))
        if at != lkey:  # a worker of another kind: its figures belong to its own key
            raise BudgetError(f"budget.latency: the workers run on different devices ({key.name}, "
                              f"{worker_key.name}); a latency table needs one kind of device")
        if refs[ready[0]] == "entries":
            save_entries(store, lkey, value, worker="latency")
        else:
            save_rest(store, lkey, job.model.path, fp, cfg.batch, cfg.tokens,
                      RestRecord(value.ms, value.p10, value.p90, value.repeats), worker="latency")
    table = latency_table(store, lkey, job.model.path, layers, cfg.batch, cfg.tokens)
    assert table is not None and not table.missing(job.space)
    return table


def _get(get: Callable[[Any], Any], ref: Any) -> Any:
    """``get(ref)``; a task that failed on its worker (a kernel error, no memory) is one line."""
    from ray.exceptions import RayError

    try:
        return get(ref)
    except RayError as exc:
        raise BudgetError(f"budget.latency: measuring the latency table failed on a worker: "
                          f"{first_line(exc)}") from None


def _no_table(device: str, job: PreparedJob, url: str, why: str) -> None:
    cfg = job.spec.budget.latency
    assert cfg is not None
    where = mask_url(normalize_url(url))
    if normalize_url(url).startswith("sqlite:///") and not Path(
            normalize_url(url).removeprefix("sqlite:///")).exists():
        where += " (no such file)"
    raise BudgetError(
        f"budget.latency: no latency table of {device} ({_dtype(job)}, batch {cfg.batch} × "
        f"{cfg.tokens} tokens, this model's layers) is stored in {where}, and no worker can "
        f"measure one: {why}; run once with workers on {device}, or leave budget.latency.device "
        "out to budget on the workers' own device")
