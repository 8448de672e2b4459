"""Running one search job: spec → space → study → lease → replay → workers → loop → stored trials.

Everything a user can get wrong is checked before any worker starts: the spec, the database,
the model, the layer rules, the budget, the calibration data. ``run``, ``resume`` and a submitted
job all come here; a study that already has trials continues where it stopped.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mpsearch.searcher.base import SearchContext, Searcher
from mpsearch.searcher.loop import LoopStats, Outcome, run_search
from mpsearch.searcher.registry import make_searcher
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Budget, Candidate, Cost, SearchSpace, build_space
from mpsearch.storage.errors import StudyConflictError
from mpsearch.storage.lease import DEFAULT_TTL, StudyLease
from mpsearch.storage.models import FINISHED
from mpsearch.storage.optuna_mirror import optuna_storage_url
from mpsearch.storage.profiles import ProfileKey, calibration_fingerprint, load_profile
from mpsearch.storage.store import StudyRecord, TrialStore
from mpsearch.storage.writer import TrialWriter
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.model_loading import ModelInfo, inspect_model
from mpsearch.workers.worker import WorkerSetup

from .resume import RequeueSearcher, replay
from .spec import JobSpec

STOPPED = "stopped"  # a study that ended short of its budget (too many failures, or exhausted)
PROFILE_STRATEGIES = ("integer-program", "hybrid")  # strategies that start from a profile


@dataclass(frozen=True)
class PreparedJob:
    spec: JobSpec
    model: ModelInfo
    space: SearchSpace
    budget: Budget
    objective: str
    texts: tuple[str, ...]


def resolve_objective(spec: JobSpec, kind: str) -> str:
    if spec.objective == "auto":
        return "kl" if kind == "causal-lm" else "embedding_distortion"
    if ":" in spec.objective:  # a user objective: it must import here as on the workers
        module, _, name = spec.objective.partition(":")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError as exc:
            raise SpecError(f"objective: cannot import module {module!r}: {exc}") from None
        if not callable(found):
            raise SpecError(f"objective: module {module!r} has no function {name!r}")
        return spec.objective
    if spec.objective == "kl" and kind != "causal-lm":
        raise SpecError(f"objective: 'kl' needs a causal LM, but model {spec.model.name!r} is an "
                        "encoder; use embedding_distortion or auto")
    return spec.objective


def prepare(spec: JobSpec) -> PreparedJob:
    """Resolve the model, build and check the space: no worker is started here."""
    info = inspect_model(spec.model)
    space = build_space(info.layers, spec.space.rules(), spec.space.tie, info.total_params,
                        spec.space.unsearched_bits)
    budget = spec.budget.to_budget()
    space.check_budget(budget)
    objective = resolve_objective(spec, info.kind)
    texts = tuple(load_texts(spec.calibration))
    return PreparedJob(spec, info, space, budget, objective, texts)


def profile_key(job: PreparedJob, samples: int | None = None) -> ProfileKey:
    """The key of ``job``'s profile: model path, fingerprint of the scored texts, objective."""
    texts = job.texts if samples is None else job.texts[:samples]
    return ProfileKey(job.model.path, calibration_fingerprint(texts, job.spec.calibration.seq_len),
                      job.objective)


def search_context(job: PreparedJob, store: TrialStore) -> SearchContext:
    """What the strategy may use beyond the space: the Optuna storage beside the store, and the
    sensitivity profile already measured for this model and calibration (``mpsearch profile``)."""
    spec = job.spec
    storage = None
    if spec.searcher.name == "optuna":
        storage = optuna_storage_url(store.url)
    profile = None
    if spec.searcher.name in PROFILE_STRATEGIES:
        rows = load_profile(store, profile_key(job))
        profile = {key: row.delta for key, row in rows.items() if row.delta is not None} or None
    return SearchContext(study=spec.study, storage=storage, profile=profile)


def wants_proxy(spec: JobSpec) -> bool:
    return spec.searcher.name in PROFILE_STRATEGIES and bool(spec.searcher.params.get("proxy"))


def proxies_on_ray(job: PreparedJob) -> dict[tuple[str, str], float]:
    """The space's proxy errors (:func:`mpsearch.workers.profile.space_proxies`), computed by a
    Ray task with a worker's resources: the driver need not hold the model or a GPU."""
    import ray

    from mpsearch.workers.errors import WorkerError
    from mpsearch.workers.profile import space_proxies

    from .executor import first_line

    w = job.spec.workers
    task = ray.remote(num_cpus=w.cpus, num_gpus=w.gpus)(space_proxies)
    try:
        return ray.get(task.remote(worker_setup(job), job.space))
    except Exception as exc:  # a Ray-wrapped failure of the task
        raise WorkerError(f"proxy errors: {first_line(exc)}") from None


def worker_setup(job: PreparedJob) -> WorkerSetup:
    device = job.spec.model.device
    if device == "auto":
        device = "cuda" if job.spec.workers.gpus > 0 else "cpu"
    return WorkerSetup(
        model_path=job.model.path, kind=job.model.kind, objective=job.objective,
        texts=job.texts, seq_len=job.spec.calibration.seq_len,
        batch_size=job.spec.calibration.batch_size, dtype=job.spec.model.dtype, device=device,
        threads=max(int(job.spec.workers.cpus), 1), kl_top_k=job.spec.kl_top_k,
        cache_device_bytes=job.spec.workers.cache_device_bytes)


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON (a non-finite float becomes its string), for the state snapshot."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_json_safe(v) for v in items]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class StoreRecorder:
    """The loop's recorder: trials are numbered in memory and written once per loop turn.

    ``flush`` runs (through the executor's ``before_dispatch``) before candidates are sent and
    before the driver blocks on results: a trial's row exists before a worker sees it, and a
    result is committed before the driver waits for the next one.
    """

    def __init__(self, writer: TrialWriter, searcher: Searcher, lease: StudyLease | None = None,
                 state_every: float = 1.0) -> None:
        self.writer, self.searcher, self.lease = writer, searcher, lease
        self.state_every = state_every
        self._state_at = -math.inf

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        retry = self.searcher.retry_of(candidate) if isinstance(
            self.searcher, RequeueSearcher) else None
        return self.writer.start(candidate, cost.avg_bits, cost.total_bytes, feasible, retry)

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        self.writer.finish(key, outcome.objective, outcome.worker or None, outcome.error,
                           outcome.seconds, outcome.extra)

    def flush(self, final: bool = False) -> None:
        if self.lease is not None:
            self.lease.check()
        now = time.monotonic()
        if final or now - self._state_at >= self.state_every:
            self.writer.set_state(_json_safe(self.searcher.state()))
            self._state_at = now
        self.writer.flush()


@dataclass(frozen=True)
class JobResult:
    study: StudyRecord
    stats: LoopStats
    seconds: float
    resumed_trials: int
    requeued: int = 0
    replay_note: str | None = None


def _check_space(study: StudyRecord, space: SearchSpace) -> None:
    if study.space.to_dict() != space.to_dict():
        raise StudyConflictError(
            f"study {study.name!r}: the model's layers or options no longer match the stored "
            "study (the model or the space rules changed); run it under a new study name")


def run_job(spec: JobSpec, store: TrialStore, address: str | None = None,
            on_start: Callable[[StudyRecord, int], None] | None = None,
            on_result: Callable[[LoopStats, Candidate, Outcome], None] | None = None, *,
            extend: int = 0, lease_ttl: float = DEFAULT_TTL,
            executor_options: dict[str, Any] | None = None) -> JobResult:
    """Run, continue or extend the study of ``spec`` until it has its completed evaluations.

    The driver takes the study's lease first; trials a dead driver left ``running`` are marked
    failed and their candidates dispatched again; the searcher is rebuilt by replaying the stored
    trials (see :mod:`.resume`). ``extend`` adds evaluations to the study's budget.
    """
    from .executor import RayExecutor
    from .ray_runtime import connect

    start = time.perf_counter()
    job = prepare(spec)
    # The identity includes what the calibration source produced: the built-in corpus follows the
    # Python version, and a study must not continue on other samples than it started with.
    identity = {**spec.identity(),
                "calibration_fingerprint": calibration_fingerprint(job.texts,
                                                                   spec.calibration.seq_len)}
    study, created = store.open_study(spec.study, spec.model_dump(mode="json"), identity,
                                      job.space, job.model.path, job.objective, spec.evaluations)
    if not created:
        _check_space(study, job.space)
    with StudyLease(store, study.id, study.name, ttl=lease_ttl) as lease:
        store.mark_running_failed(study.id, "driver stopped before the result arrived")
        if extend:
            store.set_evaluations(study.id, study.evaluations + extend)
        study = store.study(study.name)
        context = search_context(job, store)
        w = spec.workers
        if wants_proxy(spec):
            connect(address, num_cpus=max(int(w.count * w.cpus), 1), num_gpus=None)
            context = replace(context, proxy=proxies_on_ray(job))
        searcher, replayed = replay(
            lambda: make_searcher(spec.searcher, job.space, job.budget, spec.seed, context),
            store.trials(study.name))
        if on_start is not None:
            on_start(study, replayed.completed)
        remaining = study.evaluations - replayed.completed
        stats = LoopStats(stopped_because="the study already has its evaluations")
        if remaining > 0:
            connect(address, num_cpus=max(int(w.count * w.cpus), 1), num_gpus=None)
            wrapped = RequeueSearcher(searcher, replayed.owed)
            writer = TrialWriter(store, study.id, spec.seed)
            recorder = StoreRecorder(writer, wrapped, lease)
            options = {"depth": w.depth, **(executor_options or {})}
            executor = RayExecutor(worker_setup(job), job.space, w.count, w.cpus, w.gpus,
                                   before_dispatch=recorder.flush, **options)
            try:
                stats = run_search(wrapped, executor, recorder, remaining, job.space, job.budget,
                                   on_result=on_result)
            finally:
                try:
                    recorder.flush(final=True)
                finally:
                    executor.shutdown()
                    writer.close()
        done = replayed.completed + stats.completed
        store.set_study_status(study.id, FINISHED if done >= study.evaluations else STOPPED)
    return JobResult(store.study(study.name), stats, time.perf_counter() - start,
                     replayed.completed, len(replayed.owed), replayed.diverged)
