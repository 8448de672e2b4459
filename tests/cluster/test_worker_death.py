"""A worker that dies is reported in mpsearch's own words: which worker, why, what ran again.

A tiny actor on the shared Ray instance kills its own process (``os._exit``) the first time it
is given one chosen candidate; the executor replaces it, dispatches the candidate again, and says
so on the ``mpsearch.cluster`` logger, which the CLI prints one line at a time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import ray

from mpsearch.cluster.executor import RayExecutor, death_reason
from mpsearch.spaces import Candidate, LayerInfo, LayerRule, build_space, parse_option

pytestmark = pytest.mark.slow

SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 128, 128) for i in range(3)],
                    [LayerRule("blocks", tuple(parse_option(o) for o in ("int4-g128-asym",
                                                                         "fp16")))], (), None)


@ray.remote
class DyingActor:
    """Evaluates instantly; dies the first time it sees the candidate (1, 1, 1)."""

    def __init__(self, marker, space, label):
        self.marker, self.label = marker, f"{label}@pid{os.getpid()}"

    def name(self):
        return self.label

    def evaluate(self, candidate):
        from mpsearch.workers.worker import EvalOutcome

        if candidate.choices == (1, 1, 1) and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return self.label, EvalOutcome(float(sum(candidate.choices)), 0.0)


def test_a_dead_worker_is_named_with_its_reason_and_what_ran_again(ray_session, tmp_path,
                                                                   caplog):
    caplog.set_level(logging.WARNING, logger="mpsearch.cluster")
    executor = RayExecutor(str(tmp_path / "died"), SPACE, 1, actor_cls=DyingActor)
    try:
        victim = executor.labels[0]
        executor.submit(7, Candidate((1, 1, 1)))
        results = []
        while not results:
            results = executor.collect()
        assert [(key, outcome.objective) for key, outcome in results] == [(7, 3.0)]
        assert results[0][1].worker != victim  # evaluated by the replacement
    finally:
        executor.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.name == "mpsearch.cluster"]
    assert len(lines) == 3, lines
    died, again, up = lines
    assert died.startswith(f"worker {victim} died (its worker process has died: pid ")
    assert "starting replacement 1 of at most 12" in died and "\n" not in died
    assert again == f"trial 7 dispatched again (it was on worker {victim}; attempt 2 of 3)"
    assert up.startswith("replacement worker w0@pid") and up.endswith(" is up")


def test_death_reason_reads_rays_message():
    class Died(Exception):
        error_msg = ("The actor died unexpectedly before finishing this task.\n\tclass_name: W\n"
                     "\tpid: 22434\n\tip: 10.0.0.5\nThe actor is dead because its node has died. "
                     "Node ID: abc")
    assert death_reason(Died()) == "its node has died: pid 22434 on 10.0.0.5"
    assert death_reason(RuntimeError("CUDA error: an illegal memory access")) == \
        "CUDA error: an illegal memory access"


@ray.remote
class PoisonedActor:
    """Evaluates instantly, except the candidate (1, 1, 1), which kills it every time."""

    def __init__(self, _setup, space, label):
        self.label = f"{label}@pid{os.getpid()}"

    def name(self):
        return self.label

    def evaluate(self, candidate):
        from mpsearch.workers.worker import EvalOutcome

        if candidate.choices == (1, 1, 1):
            os._exit(1)
        return self.label, EvalOutcome(float(sum(candidate.choices)), 0.0)


def test_a_candidate_waiting_behind_a_worker_killer_is_not_charged_its_deaths(ray_session,
                                                                              caplog):
    """At depth 2 the worker holds a second candidate while it evaluates the first: when the
    first kills it, only the first is charged an attempt; the one waiting behind it is sent
    again as it was, and completes, while the killer fails after ``max_attempts``."""
    caplog.set_level(logging.WARNING, logger="mpsearch.cluster")
    executor = RayExecutor(None, SPACE, 1, actor_cls=PoisonedActor, depth=2, max_attempts=2)
    try:
        victim = executor.labels[0]
        executor.submit(1, Candidate((1, 1, 1)))
        executor.submit(2, Candidate((0, 1, 0)))
        results: dict[int, object] = {}
        while len(results) < 2:
            results.update(executor.collect())
    finally:
        executor.shutdown()
    assert results[2].objective == 1.0 and results[2].error is None
    assert results[1].objective is None and "worker died 2 times" in results[1].error
    lines = [r.getMessage() for r in caplog.records if r.name == "mpsearch.cluster"]
    assert f"trial 2 dispatched again (it was waiting on worker {victim}, behind the one it " \
           "was evaluating)" in lines
    assert not [ln for ln in lines if ln.startswith("trial 2 failed")]
