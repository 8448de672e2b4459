"""Workers started before the job is prepared (cluster/prestart.py): the actor's preloaded model
is the one its worker scores with, a preload that is not what the setup loads is dropped, and a
study run through them stores the same objectives as one whose workers load after the setup."""

from __future__ import annotations

import pytest
import ray

from mpsearch.cluster.job import prepare, run_job, worker_setup
from mpsearch.cluster.prestart import EarlyWorkers
from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces.space import Candidate
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.workers.actor import ModelPreload, WorkerActor

pytestmark = pytest.mark.slow


def spec_of(study, model, tmp_path, store="store.db"):
    return parse_spec({
        "study": study,
        "model": {"name": model},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.", "options": ["int4-g32-asym", "fp16"]}]},
        "budget": {"avg_bits": 12.0},
        "evaluations": 4,
        "workers": {"count": 1, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / store}"},
    })


def scores(actor, space) -> list[float]:
    ray.get(actor.load_model.remote())
    return [ray.get(actor.evaluate.remote(Candidate(tuple([k] * len(space.genes)))))[1].objective
            for k in range(2)]


def test_the_preloaded_model_is_the_one_scored_and_a_mismatched_preload_is_dropped(
        ray_session, tiny_llama_path, tmp_path):
    job = prepare(spec_of("p", tiny_llama_path, tmp_path))
    setup = worker_setup(job)
    plain = WorkerActor.remote(setup, job.space, "plain")
    same = WorkerActor.remote(None, None, "same", ModelPreload(
        job.model.path, "auto", setup.dtype, setup.device, 1))
    other = WorkerActor.remote(None, None, "other", ModelPreload(
        job.model.path, "auto", "float16", setup.device, 1))  # not what the setup loads
    for actor in (same, other):
        actor.configure.remote(setup, job.space)
    expected = scores(plain, job.space)
    assert scores(same, job.space) == expected
    assert scores(other, job.space) == expected
    assert ray.get(same.took_preload.remote()) is True
    assert ray.get(other.took_preload.remote()) is False
    assert ray.get(plain.took_preload.remote()) is False
    for actor in (plain, same, other):
        ray.kill(actor)


def test_a_study_run_on_early_workers_equals_one_on_workers_started_later(
        ray_session, tiny_llama_path, tmp_path):
    spec = spec_of("early", tiny_llama_path, tmp_path)
    store = TrialStore(spec.storage.url)
    early = EarlyWorkers(spec, None)
    actors = list(early._actors)
    try:
        run_job(spec, store, early=early)
    finally:
        early.close()
    assert early.take() == []  # the executor took them
    with pytest.raises(ray.exceptions.RayActorError):  # and stopped them at the end
        ray.get(actors[0].name.remote())
    late = spec_of("early", tiny_llama_path, tmp_path, store="late.db")
    run_job(late, TrialStore(late.storage.url))

    def objectives(s):
        return [(t.number, t.objective) for t in TrialStore(s.storage.url).trials("early")
                if t.status == COMPLETE]

    assert len(objectives(spec)) == 4
    assert objectives(spec) == objectives(late)
