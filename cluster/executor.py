"""Evaluating candidates on a pool of Ray worker actors, with ``ray.wait``.

Each actor evaluates one candidate at a time; the search loop keeps every actor busy. A worker
that dies (process killed, node lost) is told apart from a candidate that failed: the actor is
replaced and its candidate re-dispatched, up to ``max_attempts`` times, after which the trial is
reported failed with the reason. A result is delivered once, so a trial is never recorded twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError, RayError

from mpsearch.searcher.loop import Outcome
from mpsearch.spaces.space import Candidate, SearchSpace
from mpsearch.workers.actor import WorkerActor
from mpsearch.workers.errors import WorkerError
from mpsearch.workers.worker import WorkerSetup


@dataclass
class _Flight:
    key: int
    candidate: Candidate
    actor_index: int
    attempts: int


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # Ray wraps the worker's traceback; the cause's last line is the useful part.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


class RayExecutor:
    def __init__(self, setup: WorkerSetup, space: SearchSpace, count: int, cpus: float = 1.0,
                 gpus: float = 0.0, max_attempts: int = 3) -> None:
        self.setup, self.space = setup, space
        self.cpus, self.gpus = cpus, gpus
        self.max_attempts = max_attempts
        self.replaced = 0
        self.actors = [self._spawn(i) for i in range(count)]
        self.labels = self._ready(self.actors)
        self.idle = list(range(count))
        self.running: dict[ray.ObjectRef, _Flight] = {}

    def _spawn(self, index: int):
        return WorkerActor.options(num_cpus=self.cpus, num_gpus=self.gpus).remote(
            self.setup, self.space, f"w{index}")

    @staticmethod
    def _ready(actors) -> list[str]:
        """Wait until every actor has loaded its model; a load failure is the user's error."""
        try:
            return ray.get([a.name.remote() for a in actors])
        except RayError as exc:
            raise WorkerError(f"worker failed to start: {_first_line(exc)}") from None

    @property
    def slots(self) -> int:
        return len(self.actors)

    def submit(self, key: int, candidate: Candidate, attempts: int = 0) -> None:
        index = self.idle.pop()
        ref = self.actors[index].evaluate.remote(candidate)
        self.running[ref] = _Flight(key, candidate, index, attempts)

    def collect(self) -> list[tuple[int, Outcome]]:
        done: list[tuple[int, Outcome]] = []
        while not done and self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1)
            more, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in dict.fromkeys([*ready, *more]):
                flight = self.running.pop(ref)
                try:
                    label, result = ray.get(ref)
                except RayActorError as exc:
                    self._replace(flight.actor_index)
                    if flight.attempts + 1 >= self.max_attempts:
                        done.append((flight.key, Outcome(
                            None, 0.0, "", f"worker died {flight.attempts + 1} times evaluating "
                            f"this candidate: {_first_line(exc)}")))
                    else:
                        self.submit(flight.key, flight.candidate, flight.attempts + 1)
                    continue
                self.idle.append(flight.actor_index)
                done.append((flight.key, Outcome(result.objective, result.seconds, label,
                                                 result.error)))
        return done

    def _replace(self, index: int) -> None:
        """Start a new actor in place of a dead one (the old handle is dropped)."""
        self.replaced += 1
        self.actors[index] = self._spawn(index)
        self.idle.append(index)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.idle = [], []
