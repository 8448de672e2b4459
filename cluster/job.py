"""Running one search job from its spec: spec → model → space → study, then the driver.

Everything a user can get wrong is checked before any worker starts: the spec, the database,
the model, the layer rules, the budget, the calibration data. ``run``, ``resume`` and a submitted
job all come here; the session itself (lease, replay, writer, loop) is :mod:`.driver`, with Ray
worker actors as its executor. A study that already has trials continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mpsearch.searcher.loop import LoopStats, Outcome
from mpsearch.searcher.registry import SearcherConfig, searcher_needs
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.experts import expert_group_for
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.runtime import KV_ONE_PER_MODEL, kv_refusal, restrict
from mpsearch.spaces.space import Budget, Candidate, SearchSpace, build_space
from mpsearch.storage.errors import StudyConflictError
from mpsearch.storage.lease import DEFAULT_TTL
from mpsearch.storage.profiles import ProfileKey, calibration_fingerprint
from mpsearch.storage.store import CalibrationRecord, StudyRecord, TrialStore
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.model_loading import ModelInfo, inspect_model
from mpsearch.workers.placement import worker_devices
from mpsearch.workers.worker import WorkerSetup

from .driver import SessionResult, StoreRecorder, drive
from .mirror import check_mirror
from .ray_runtime import connect_for
from .spec import JobSpec


@dataclass(frozen=True)
class PreparedJob:
    spec: JobSpec
    model: ModelInfo
    space: SearchSpace
    budget: Budget  # the loosest point of a frontier: what a feasible trial meets
    objective: str
    texts: tuple[str, ...]
    frontier: tuple[Budget, ...] = ()  # every budget point, tightest first, when more than one


def resolve_objective(spec: JobSpec, kind: str) -> str:
    if spec.objective == "auto":
        return "kl" if kind == "causal-lm" else "embedding_distortion"
    if spec.objective not in ("kl", "embedding_distortion"):
        return spec.objective  # a user objective, validated with the spec (objective_registry)
    if spec.objective == "kl" and kind != "causal-lm":
        raise SpecError(f"objective: 'kl' needs a causal LM, but model {spec.model.name!r} is an "
                        "encoder; use embedding_distortion or auto")
    return spec.objective


def prepare(spec: JobSpec) -> PreparedJob:
    """Resolve the model, build and check the space: no worker is started here."""
    info = inspect_model(spec.model)
    info.check_seq_len(spec.calibration.seq_len, spec.model.name)
    runtime = restrict(spec.space.rules(), spec.space.tie, spec.space.runtime,
                       [layer.name for layer in info.layers])
    for label, why in runtime.removed.items():
        logging.getLogger("mpsearch.cluster").warning(
            "space.runtime %s: option %s removed (%s)", spec.space.runtime, label, why)
    if spec.budget.memory is not None and info.kind != "causal-lm":
        raise SpecError(f"budget.memory: model {spec.model.name!r} is an encoder, which keeps no "
                        "KV cache; bound its weights with total_bytes instead")
    kv_options = kv_cache_options(spec, info)
    attention = info.attention if spec.budget.memory is not None or kv_options else ()
    experts = spec.space.experts
    group = expert_group_for([layer.name for layer in info.layers],
                             experts.per if experts else "expert", experts.group if experts else 1,
                             given=experts is not None, runtime=spec.space.runtime)
    assert spec.space.unsearched_bits is not None  # JobSpec fills in the dtype's width
    space = build_space(info.layers, runtime.rules, runtime.ties, info.total_params,
                        spec.space.unsearched_bits, attention, group, kv_options,
                        kv_tied=spec.space.runtime in KV_ONE_PER_MODEL)
    if searcher_needs(spec.searcher).routing and not space.has_experts:
        raise SpecError(f"searcher.params.routing: model {spec.model.name!r} has no routed "
                        "experts to weight by routing frequency; remove routing")
    lookups = [layer.name for layer in space.layers if layer.kind == "embedding"]
    quantized = [g.name for g in space.genes if any(ly.kind == "embedding" for ly in g.layers)
                 and any(o.format != "fp16" for o in g.options)]
    if spec.space.runtime in ("vllm", "transformers") and quantized:
        raise SpecError(f"space.runtime {spec.space.runtime}: layer {quantized[0]} is an "
                        f"embedding, which its compressed-tensors checkpoint cannot hold "
                        f"quantized (transformers' loader cannot rebuild a packed embedding); "
                        f"give it [fp16], or use runtime llama.cpp (GGUF's token_embd)")
    if spec.budget.latency is not None and lookups:
        raise SpecError(f"budget.latency: layer {lookups[0]} is an embedding, a lookup that the "
                        "latency model (a sum of measured GEMM times) does not time; leave it "
                        "out of space.layers for a latency budget")
    points = spec.budget.to_budgets()
    if spec.budget.active_bytes is not None and not space.has_experts:
        raise SpecError(f"budget.active_bytes: model {spec.model.name!r} has no routed experts, "
                        "so every token reads all its weights; bound them with total_bytes")
    for point in points:  # the tightest first: the one a frontier's error names
        space.check_budget(point, "budget" if len(points) == 1 else
                           f"frontier budget {points.index(point) + 1} of {len(points)},")
    objective = resolve_objective(spec, info.kind)
    texts = tuple(load_texts(spec.calibration, info.path))
    return PreparedJob(spec, info, space, points[-1], objective, texts,
                       points if len(points) > 1 else ())


def kv_cache_options(spec: JobSpec, info: ModelInfo) -> tuple[QuantOption, ...]:
    """``space.kv_cache``'s options, or SpecError when the model keeps no KV cache that can be
    scored (an encoder; attention without k_proj/v_proj, as GPT-2's fused c_attn) or the
    runtime cannot hold one of them."""
    options = tuple(spec.space.kv_cache or ())
    if not options:
        return ()
    name = spec.model.name
    if info.kind != "causal-lm":
        raise SpecError(f"space.kv_cache: model {name!r} is an encoder, which keeps no KV cache; "
                        "drop space.kv_cache")
    layers = {layer.name for layer in info.layers}
    if not info.attention or any(f"{a.name}.k_proj" not in layers or f"{a.name}.v_proj" not in
                                 layers for a in info.attention):
        raise SpecError(f"space.kv_cache: model {name!r} has no attention layers with k_proj and "
                        "v_proj, whose outputs the KV cache holds (GPT-2's fused c_attn is not "
                        "split); drop space.kv_cache")
    for option in options:
        if why := kv_refusal(spec.space.runtime, option):
            raise SpecError(f"space.kv_cache: runtime {spec.space.runtime} cannot hold a "
                            f"{option.label} cache: {why}")
    return options


def profile_key(job: PreparedJob, samples: int | None = None) -> ProfileKey:
    """The key of ``job``'s profile: model path, fingerprint of the scored texts, objective."""
    texts = job.texts if samples is None else job.texts[:samples]
    return ProfileKey(job.model.path, calibration_fingerprint(texts, job.spec.calibration.seq_len),
                      job.objective)


@dataclass
class RayResources:
    """:class:`~mpsearch.cluster.driver.JobResources` of a job: its profile key, and its Ray
    workers, set up once (:mod:`.warmup`: model, reference, the level database built across
    them, proxies) for whichever asks first, the strategy's proxies or the loop's executor."""

    job: PreparedJob
    address: str | None = None
    store_url: str = ""
    listener: Any = None  # a warmup.SetupListener
    executor_options: dict[str, Any] | None = None
    early: Any = None  # the prestart.EarlyWorkers of ``mpsearch run``, if any
    _workers: Any = None  # the warmup.SetUpWorkers once started

    def profile_key(self) -> ProfileKey:
        return profile_key(self.job)

    def workers(self) -> Any:
        from .warmup import SetUpWorkers

        if self._workers is None:
            connect_for(self.job.spec, self.address)
            self._workers = SetUpWorkers(self.job, worker_setup(self.job), self.store_url,
                                         self.listener, self.executor_options, self.early)
        return self._workers

    def proxies(self) -> dict[tuple[str, str], float]:
        return self.workers().proxies()

    def routing(self) -> dict[str, float]:
        return self.workers().routing()

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
        if self.early is not None:
            self.early.close()


def worker_setup(job: PreparedJob) -> WorkerSetup:
    device = job.spec.worker_device()
    needs = searcher_needs(job.spec.searcher)
    return WorkerSetup(
        model_path=job.model.path, kind=job.model.kind, objective=job.objective,
        texts=job.texts, seq_len=job.spec.calibration.seq_len,
        batch_size=job.spec.calibration.batch_size, dtype=job.spec.model.dtype, device=device,
        threads=max(int(job.spec.workers.cpus), 1), kl_top_k=job.spec.kl_top_k,
        cache_device_bytes=job.spec.workers.cache_device_bytes,
        devices=worker_devices(job.spec.workers.gpus, device), phased=True,
        proxies=needs.proxy, proxy_kind=needs.proxy_kind, routing=needs.routing)


def report_placement(executor: Any) -> None:
    """Print each worker's placement, one line per device (weights, activations, variants)."""
    import sys

    import ray

    lines = ray.get([actor.placement.remote() for actor in executor.actors])
    for label, device_lines in zip(executor.labels, lines, strict=True):
        for line in device_lines:
            print(f"{label} {line}", file=sys.stderr)


def _check_space(study: StudyRecord, space: SearchSpace) -> None:
    if study.space.to_dict() != space.to_dict():
        raise StudyConflictError(
            f"study {study.name!r}: the model's layers or options no longer match the stored "
            "study (the model or the space rules changed); run it under a new study name")


def open_job_study(job: PreparedJob, store: TrialStore) -> StudyRecord:
    """The study of ``job``, created or reopened; a reopened one must search the same space."""
    spec = job.spec
    # The identity includes what the calibration source produced: the built-in corpus follows the
    # Python version, and a study must not continue on other samples than it started with.
    fingerprint = calibration_fingerprint(job.texts, spec.calibration.seq_len)
    identity = {**spec.identity(), "calibration_fingerprint": fingerprint}
    calibration = CalibrationRecord(**spec.calibration.model_dump(), fingerprint=fingerprint)
    study, created = store.open_study(
        spec.study, spec.model_dump(mode="json"), identity, job.space, job.model.path,
        job.objective, spec.evaluations, budget=job.budget, kind=spec.model.kind,
        dtype=spec.model.dtype, calibration=calibration, frontier=job.frontier)
    if not created:
        _check_space(study, job.space)
    return study


def run_job(spec: JobSpec, store: TrialStore, address: str | None = None,
            on_start: Callable[[StudyRecord, int], None] | None = None,
            on_result: Callable[[LoopStats, Candidate, Outcome], None] | None = None, *,
            extend: int = 0, lease_ttl: float = DEFAULT_TTL,
            executor_options: dict[str, Any] | None = None,
            job: PreparedJob | None = None,
            switch_to: SearcherConfig | None = None, on_phase: Any = None,
            early: Any = None) -> SessionResult:
    """Run, continue or extend the study of ``spec`` until it has its completed evaluations.

    The spec's part: check everything before a worker starts, open the study, say how workers
    are made (Ray actors); the session itself is :func:`mpsearch.cluster.driver.drive`.
    ``extend`` adds evaluations to the study's budget; ``switch_to`` continues it with another
    strategy (``resume --searcher``); ``on_phase`` (a
    :class:`~mpsearch.cluster.warmup.SetupListener`) follows the workers' setup phases, which
    are also stored in the study row for ``mpsearch status``. ``early``: the workers
    :class:`~.prestart.EarlyWorkers` started while the job was prepared.
    """
    from .latency import with_latency
    from .warmup import StudyPhaseListener

    start = time.perf_counter()
    job = job or prepare(spec)  # the CLI prepares first: nothing is stored before it passes
    job = with_latency(job, store.url, address)  # the CLI's job has its latency row already
    check_mirror(store, spec.study)  # before the study is created: a foreign Optuna study
    study = open_job_study(job, store)
    resources = RayResources(job, address, store.url, StudyPhaseListener(store, study.id, on_phase),
                             executor_options, early)

    def make_executor(recorder: StoreRecorder) -> Any:
        executor = resources.workers().executor(recorder)
        if spec.workers.gpus > 1:  # one model over several GPUs: where each worker put its parts
            report_placement(executor)
        return executor

    try:
        result = drive(store, study, spec.searcher, job.budget, make_executor, seed=spec.seed,
                       frontier=job.frontier, resources=resources, extend=extend, lease_ttl=lease_ttl,
                       on_start=on_start, on_result=on_result, switch_to=switch_to,
                       writer_options={"retry_seconds": spec.storage.retry_seconds},
                       device=spec.worker_device())
    finally:
        resources.close()
    return replace(result, seconds=time.perf_counter() - start)
