"""KnownResultsSearcher: a stored or in-flight configuration is answered, never dispatched again,
and the wrapped strategy is still told each candidate it asked for exactly once."""

from __future__ import annotations

from collections import Counter

from mpsearch.searcher import Evaluation, Searcher, SerialExecutor, run_search
from mpsearch.searcher.known import KnownResultsSearcher
from mpsearch.spaces.space import Budget, Candidate


class Scripted(Searcher):
    """Proposes a fixed list (repeats included) and records what it is told."""

    name = "scripted"

    def __init__(self, space, script):
        super().__init__(space, Budget(avg_bits=16))
        self.script = [Candidate(c) for c in script]
        self.told: list[tuple[tuple[int, ...], float | None]] = []

    def ask(self, n):
        out, self.script = self.script[:n], self.script[n:]
        return out

    def tell(self, results):
        self.told += [(r.candidate.choices, r.objective) for r in results]

    @property
    def finished(self):
        return not self.script


def test_stored_and_in_flight_repeats_are_answered_not_dispatched(synthetic):
    space = synthetic.make_space(3, seed=1)
    f = synthetic.Additive(space, seed=1)
    stored = [(0, 0, 0), (1, 1, 1)]
    script = [(0, 0, 0), (2, 2, 2), (2, 2, 2), (1, 1, 1), (3, 3, 3), (2, 2, 2), (0, 1, 2)]
    inner = Scripted(space, script)
    wrapped = KnownResultsSearcher(inner)
    wrapped.tell([Evaluation(Candidate(c), f(Candidate(c))) for c in stored])
    inner.told.clear()
    rec = synthetic.MemoryRecorder()
    run_search(wrapped, SerialExecutor(f, slots=3), rec, 10, space, inner.budget)
    dispatched = [t["candidate"].choices for t in rec.trials]
    assert sorted(dispatched) == [(0, 1, 2), (2, 2, 2), (3, 3, 3)]  # each once, none stored
    assert Counter(c for c, _ in inner.told) == Counter(script)  # every ask told exactly once
    assert all(v == f(Candidate(c)) for c, v in inner.told)
    # without the wrapper the same strategy evaluates the stored and repeated ones again
    rec = synthetic.MemoryRecorder()
    run_search(Scripted(space, script), SerialExecutor(f, slots=3), rec, 10, space, inner.budget)
    assert len(rec.trials) == len(script)
