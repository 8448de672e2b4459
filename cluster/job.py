"""Running one search job: spec → space → study → workers → loop → stored trials.

Everything a user can get wrong is checked before any worker starts: the spec, the database,
the model, the layer rules, the budget, the calibration data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mpsearch.searcher.loop import LoopStats, Outcome, run_search
from mpsearch.searcher.registry import make_searcher
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Budget, Candidate, SearchSpace, build_space
from mpsearch.storage.models import FINISHED
from mpsearch.storage.store import StudyRecord, TrialStore
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.model_loading import ModelInfo, inspect_model
from mpsearch.workers.worker import WorkerSetup

from .spec import JobSpec


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


def worker_setup(job: PreparedJob) -> WorkerSetup:
    device = job.spec.model.device
    if device == "auto":
        device = "cuda" if job.spec.workers.gpus > 0 else "cpu"
    return WorkerSetup(
        model_path=job.model.path, kind=job.model.kind, objective=job.objective,
        texts=job.texts, seq_len=job.spec.calibration.seq_len,
        batch_size=job.spec.calibration.batch_size, dtype=job.spec.model.dtype, device=device,
        threads=max(int(job.spec.workers.cpus), 1))


class StoreRecorder:
    """The loop's recorder: every trial is written when dispatched and when it finishes."""

    def __init__(self, store: TrialStore, study: StudyRecord, space: SearchSpace, seed: int):
        self.store, self.study, self.space, self.seed = store, study, space, seed

    def start(self, candidate: Candidate, feasible: bool) -> int:
        cost = self.space.cost(candidate)
        return self.store.start_trial(self.study.id, candidate, cost.avg_bits, cost.total_bytes,
                                      feasible, self.seed)

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        self.store.finish_trial(self.study.id, key, outcome.objective, outcome.worker or None,
                                outcome.error, outcome.seconds)


@dataclass(frozen=True)
class JobResult:
    study: StudyRecord
    stats: LoopStats
    seconds: float
    resumed_trials: int


def run_job(spec: JobSpec, store: TrialStore, address: str | None = None,
            on_start: Callable[[StudyRecord, int], None] | None = None,
            on_result: Callable[[LoopStats, Candidate, Outcome], None] | None = None) -> JobResult:
    """Run (or continue) the study of ``spec`` until it has ``spec.evaluations`` completed trials."""
    from mpsearch.searcher.base import Evaluation

    from .executor import RayExecutor
    from .ray_runtime import connect

    start = time.perf_counter()
    job = prepare(spec)
    study, _created = store.open_study(spec.study, spec.model_dump(mode="json"), spec.identity(),
                                       job.space, job.model.path, job.objective, spec.evaluations)
    store.mark_running_failed(study.id, "driver stopped before the result arrived")
    past = store.trials(study.name)
    searcher = make_searcher(spec.searcher, job.space, job.budget, spec.seed)
    done = [t for t in past if t.objective is not None]
    if done:  # a rerun continues: the searcher learns what the study already knows
        searcher.tell([Evaluation(t.candidate, t.objective) for t in done])
    remaining = spec.evaluations - len(done)
    if on_start is not None:
        on_start(study, len(done))
    stats = LoopStats(stopped_because="the study already has its evaluations")
    if remaining > 0:
        w = spec.workers
        connect(address, num_cpus=max(int(w.count * w.cpus), 1), num_gpus=None)
        executor = RayExecutor(worker_setup(job), job.space, w.count, w.cpus, w.gpus)
        try:
            stats = run_search(searcher, executor, StoreRecorder(store, study, job.space,
                                                                 spec.seed),
                               remaining, job.space, job.budget, on_result=on_result)
        finally:
            executor.shutdown()
    store.set_study_status(study.id, FINISHED)
    return JobResult(store.study(study.name), stats, time.perf_counter() - start, len(done))
