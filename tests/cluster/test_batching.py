"""Several candidates per actor call, only when evaluations are much cheaper than the call.

``RayExecutor`` weighs the worker's seconds per candidate against a call's round trip: instant
evaluations go in batches (and each result is still reported, and stored, on its own trial,
equal to what one call per candidate gives); evaluations that take longer than a round trip go
one per call. A worker that dies during a batch charges nobody: its candidates are sent again
one per call, where the one that kills workers is caught and charged.
"""

from __future__ import annotations

import logging
import os
import time

import pytest
import ray

from mpsearch.cluster.driver import drive
from mpsearch.cluster.executor import RayExecutor
from mpsearch.searcher import SearcherConfig
from mpsearch.spaces import Budget, Candidate, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import TrialStore
from mpsearch.workers.actor import BatchEvaluation

pytestmark = pytest.mark.slow

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 128 * (1 + i % 3), 128) for i in range(8)],
                    [LayerRule("blocks", OPTIONS)], (), None)


def objective(choices: tuple[int, ...]) -> float:
    return sum((i + 1) * 2.0 ** -SPACE.genes[i].options[c].bits for i, c in enumerate(choices))


@ray.remote
class TimedActor(BatchEvaluation):
    """Scores a candidate by a fixed function of its choices after ``delay`` seconds (0: at
    once); a candidate of origin ``"killer"`` kills the process (``os._exit``), every time."""

    def __init__(self, delay, space, label):
        self.delay, self.label = delay, f"{label}@pid{os.getpid()}"
        self.sizes: list[int] = []  # candidates per call received

    def name(self):
        return self.label

    def calls(self):
        return self.sizes

    def evaluate_many(self, candidates):
        self.sizes.append(len(candidates))
        return super().evaluate_many(candidates)

    def evaluate(self, candidate):
        from mpsearch.workers.worker import EvalOutcome

        if candidate.origin == "killer":
            os._exit(1)
        if self.delay:
            time.sleep(self.delay)
        return self.label, EvalOutcome(objective(candidate.choices), self.delay)


class OnePerCall(RayExecutor):
    max_batch = 1


def evaluate_all(executor: RayExecutor, candidates: list[Candidate]) -> dict[int, object]:
    """Keep the executor's slots full until every candidate has an outcome (key: its index)."""
    results: dict[int, object] = {}
    todo = list(enumerate(candidates))
    in_flight = 0
    while todo or in_flight:
        while todo and in_flight < executor.slots:
            executor.submit(*todo.pop(0))
            in_flight += 1
        done = executor.collect()
        in_flight -= len(done)
        results.update(done)
    return results


def candidates(n: int) -> list[Candidate]:
    return [Candidate(tuple((i >> b) % 2 * 2 for b in range(8))) for i in range(n)]


def test_instant_evaluations_go_in_batches_and_slow_ones_one_per_call(ray_session):
    for delay, batched in ((0.0, True), (0.05, False)):
        executor = RayExecutor(delay, SPACE, 1, actor_cls=TimedActor, depth=2)
        try:
            given = candidates(120 if batched else 16)
            results = evaluate_all(executor, given)
            sizes = ray.get(executor.actors[0].calls.remote())
        finally:
            executor.shutdown()
        assert {k: o.objective for k, o in results.items()} == \
            {i: objective(c.choices) for i, c in enumerate(given)}
        assert all(o.error is None and o.worker.startswith("w0@") for o in results.values())
        if batched:
            assert executor.batch > 1 and sizes[0] == 1 and max(sizes) > 1, (executor.batch, sizes)
            assert len(sizes) < len(given) / 2  # fewer calls than candidates
        else:  # 50 ms an evaluation against a round trip of about a millisecond
            assert executor.batch == 1 and set(sizes) == {1}, (executor.batch, sizes)


def test_batched_study_stores_what_one_call_per_candidate_stores(ray_session, tmp_path):
    """The same seeded study, through the product's driver, batched and one per call: trial
    for trial the same candidates and objectives."""
    space, budget = SPACE, Budget(avg_bits=4.25)
    store = TrialStore(f"sqlite:///{tmp_path / 'batch.db'}")
    config = SearcherConfig(name="random", params={}, baselines=True)
    batches: dict[str, int] = {}
    stored = {}
    for name, cls in (("batched", RayExecutor), ("one-per-call", OnePerCall)):
        study, _ = store.open_study(name, {"n": name}, {"n": name}, space, "m", "o", 200)

        def make_executor(recorder, cls=cls, name=name):
            class Seen(cls):  # type: ignore[misc,valid-type]
                def shutdown(self) -> None:
                    batches[name] = self.batch
                    super().shutdown()

            return Seen(0.0, space, 1, actor_cls=TimedActor, before_dispatch=recorder.flush,
                        flush_due=recorder.due_in)

        assert drive(store, study, config, budget, make_executor, seed=3).stats.completed == 200
        stored[name] = [(t.number, t.status, t.choices, t.objective, t.feasible)
                        for t in store.trials(name)]
    store.close()
    assert batches["batched"] > 1 and batches["one-per-call"] == 1
    assert len(stored["batched"]) == 200 and stored["batched"] == stored["one-per-call"]


def test_a_worker_killed_during_a_batch_charges_only_the_candidate_that_kills(ray_session,
                                                                            caplog):
    """The killer shares a batch with three others: the death charges nobody, all four go
    again one per call; the three complete on the replacement, the killer is charged for the
    deaths it causes alone and fails after ``max_attempts``."""
    caplog.set_level(logging.WARNING, logger="mpsearch.cluster")
    executor = RayExecutor(0.0, SPACE, 1, actor_cls=TimedActor, depth=1, max_attempts=2)
    killer = Candidate((1,) * 8, None, "killer")
    given = [Candidate((0,) * 8), Candidate((2,) * 8), killer, Candidate((3,) * 8)]
    try:
        victim = executor.labels[0]
        executor.batch = 4  # as sized for instant evaluations: the four go in one call
        for key, candidate in enumerate(given):
            executor.submit(key, candidate)
        results: dict[int, object] = {}
        while len(results) < 4:
            results.update(executor.collect())
        replaced = executor.replaced
    finally:
        executor.shutdown()
    for key in (0, 1, 3):
        assert results[key].objective == objective(given[key].choices)
        assert results[key].error is None and results[key].worker != victim
    assert results[2].objective is None and "worker died 2 times" in results[2].error
    assert replaced == 3  # the batch's death, then the killer's two alone
    lines = [r.getMessage() for r in caplog.records if r.name == "mpsearch.cluster"]
    for key in range(4):
        assert f"trial {key} dispatched again, alone (it was in a batch of 4 on worker " \
               f"{victim}; attempt 1 of 2)" in lines, lines
    assert [ln for ln in lines if ln.startswith("trial ") and " failed" in ln] == \
        ["trial 2 failed: its worker died 2 times while evaluating it (a candidate that kills "
         "workers is not tried again)"]
