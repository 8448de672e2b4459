"""The search loop: keep every evaluation slot busy, record each result as it arrives.

It takes an executor (who evaluates) and a recorder (who remembers) as plain interfaces, so the
same loop runs over Ray actors in production and over a function call in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mpsearch.spaces.space import Budget, Candidate, Cost, SearchSpace

from .base import Evaluation, Searcher


@dataclass(frozen=True)
class Outcome:
    """What an executor reports for one candidate."""

    objective: float | None
    seconds: float
    worker: str = ""
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. perplexity beside KL


class Executor(Protocol):
    """Evaluates candidates concurrently, ``slots`` at a time."""

    @property
    def slots(self) -> int: ...

    def submit(self, key: int, candidate: Candidate) -> None: ...

    def collect(self) -> Sequence[tuple[int, Outcome]]:
        """Block until at least one submitted evaluation is done; return all that are."""
        ...


class Recorder(Protocol):
    """Remembers trials: ``start`` before dispatch (returns the trial's key), ``finish`` after."""

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int: ...

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None: ...


@dataclass
class LoopStats:
    completed: int = 0
    failed: int = 0
    best: float | None = None  # the lowest feasible objective on every calibration sample
    stopped_because: str = ""


def run_search(
    searcher: Searcher,
    executor: Executor,
    recorder: Recorder,
    evaluations: int,
    space: SearchSpace,
    budget: Budget,
    on_result: Callable[[LoopStats, Candidate, Outcome], None] | None = None,
    max_failures: int | None = None,
) -> LoopStats:
    """Run until ``evaluations`` trials completed, the searcher is done, or too many failed.

    Failed evaluations do not count towards ``evaluations`` (a study ends with exactly that many
    completed trials) but are bounded by ``max_failures`` (default: ``evaluations``).
    """
    stats = LoopStats()
    max_failures = evaluations if max_failures is None else max_failures
    in_flight: dict[int, tuple[Candidate, bool]] = {}  # key → (candidate, within budget)
    while True:
        wanted = evaluations - stats.completed - len(in_flight)
        free = executor.slots - len(in_flight)
        proposed: list[Candidate] = []
        if wanted > 0 and free > 0 and stats.failed < max_failures:
            proposed = searcher.ask(min(free, wanted))
            for candidate in proposed:
                cost = space.cost(candidate)  # once per trial: the recorder stores it
                feasible = space.feasible(candidate, budget)
                key = recorder.start(candidate, cost, feasible)
                executor.submit(key, candidate)
                in_flight[key] = (candidate, feasible)
        if not in_flight:
            if stats.completed >= evaluations:
                stats.stopped_because = "evaluation budget reached"
            elif stats.failed >= max_failures:
                stats.stopped_because = f"{stats.failed} evaluations failed"
            else:
                stats.stopped_because = "searcher has nothing more to propose"
            return stats
        for key, outcome in executor.collect():
            candidate, feasible = in_flight.pop(key)
            recorder.finish(key, candidate, outcome)
            if outcome.objective is None:
                stats.failed += 1
            else:
                stats.completed += 1
                if feasible and candidate.samples is None and (  # a screen's: fewer samples
                        stats.best is None or outcome.objective < stats.best):
                    stats.best = outcome.objective
            searcher.tell([Evaluation(candidate, outcome.objective)])
            if on_result is not None:
                on_result(stats, candidate, outcome)


class SerialExecutor:
    """Evaluates in the calling thread with a plain function: for tests and tiny searches (and,
    having ``shutdown``, an executor the study driver accepts)."""

    def __init__(self, evaluate: Callable[[Candidate], float | None], slots: int = 1) -> None:
        self.evaluate = evaluate
        self._slots = slots
        self.pending: list[tuple[int, Candidate]] = []

    @property
    def slots(self) -> int:
        return self._slots

    def submit(self, key: int, candidate: Candidate) -> None:
        self.pending.append((key, candidate))

    def collect(self) -> list[tuple[int, Outcome]]:
        done, self.pending = self.pending, []
        return [(key, Outcome(self.evaluate(c), 0.0, "serial")) for key, c in done]

    def shutdown(self) -> None:
        self.pending = []
