"""Adopting an Optuna study made elsewhere as an mpsearch study (``mpsearch import-optuna``).

The spec says what the study searches (model, space, budget, strategy); the Optuna study brings
its results. Everything is checked before anything is written: the spec and its model, that no
mpsearch study has the spec's name, that every Optuna parameter is a gene of the space with
option labels as choices (:func:`~mpsearch.storage.optuna_import.read_optuna_study`), and that
the study's mirror location holds no foreign Optuna study of that name. The trials are then
written through the store's one write path under the study's lease, the history records them as
``optuna-import`` followed by the spec's strategy, and ``mpsearch resume`` continues the study
with that strategy, told every imported trial first.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsearch.storage.errors import StudyConflictError, StudyNotFoundError, mask_url
from mpsearch.storage.lease import StudyLease
from mpsearch.storage.models import FINISHED, STOPPED
from mpsearch.storage.optuna_import import IMPORT_ORIGIN, read_optuna_study
from mpsearch.storage.store import StudyRecord, TrialStore
from mpsearch.storage.strategies import record_switch

from .job import open_job_study, prepare
from .latency import with_latency
from .mirror import check_mirror, sync_mirror
from .spec import JobSpec


@dataclass(frozen=True)
class ImportResult:
    study: StudyRecord
    completed: int
    failed: int


def import_optuna_study(spec: JobSpec, url: str, name: str, store: TrialStore) -> ImportResult:
    """Create the study of ``spec`` in ``store`` from Optuna study ``name`` at ``url``.

    Raises:
        StudyConflictError: the store already has a study of the spec's name.
        OptunaImportError: the Optuna study is missing or does not match the spec's space.
        MirrorConflictError: a foreign Optuna study of that name sits where the mirror goes.
    """
    job = with_latency(prepare(spec), store.url)  # a latency budget's row: its stored table
    try:
        store.study(spec.study)
    except StudyNotFoundError:
        pass
    else:
        raise StudyConflictError(f"study {spec.study!r} already exists in {store.masked_url}; "
                                 "import under another name (the spec's study field)")
    trials = read_optuna_study(url, name, job.space)
    check_mirror(store, spec.study)
    study = open_job_study(job, store)
    with StudyLease(store, study.id, study.name):
        record_switch(store, study, IMPORT_ORIGIN, {"storage": mask_url(url), "study": name})
        writer = store.writer(study.id, spec.seed)
        try:
            for t in trials:
                cost = job.space.cost(t.candidate)
                number = writer.start(t.candidate, cost.avg_bits, cost.total_bytes,
                                      job.space.feasible(t.candidate, job.budget))
                writer.finish(number, t.objective, "optuna",
                              None if t.objective is not None else "failed in Optuna", None,
                              t.extra or None)
            writer.flush()
        finally:
            writer.close()
        record_switch(store, study, spec.searcher.name, dict(spec.searcher.params))
        completed = sum(t.objective is not None for t in trials)
        store.set_study_status(study.id, FINISHED if completed >= study.evaluations else STOPPED)
    sync_mirror(store, study.name)
    return ImportResult(store.study(study.name), completed, len(trials) - completed)
