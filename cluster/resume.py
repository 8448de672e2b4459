"""Continuing a study: rebuild its searcher from the stored trials, re-queue what was in flight.

**Approach: replay, not snapshots.** Searchers are deterministic for a seed given the same
sequence of asks and results (the contract in ``searcher/base.py``), and every trial row records
where its result entered that sequence (``told_after``: how many trials had been dispatched when
it was told). So a fresh searcher, asked one candidate per stored trial in trial order and told
each stored result at the point it was told originally, reaches exactly the state the crashed
driver had: the evolutionary parent, generation, random stream, everything, without any searcher
having to serialize itself. Each asked candidate is checked against the stored one; if they
differ (the searcher's code changed between versions, say), the replay falls back to a fresh
searcher told every stored result, and says so. A strategy that persists its own state (the
Optuna searcher with its study in a database) is not replayed: it reopens that state and is told
the stored results it may lack.

The searcher's ``state()`` is also stored with the trials (``mps_study.searcher_state``) for
``mpsearch status``; it is a view, not what resume relies on.

Trials left ``running`` are marked failed (``interrupted``) when a driver takes the study over;
their candidates were asked and never told, so the resumed search dispatches them first, as new
trials whose ``retry_of`` names the interrupted one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mpsearch.searcher.base import Evaluation, Searcher
from mpsearch.spaces.space import Candidate
from mpsearch.storage.models import COMPLETE, FAILED
from mpsearch.storage.store import TrialRecord


@dataclass(frozen=True)
class Owed:
    """A candidate the searcher asked for and was never told about."""

    candidate: Candidate
    last_trial: int  # the trial that last tried it (the retry's ``retry_of``)


@dataclass
class ReplayResult:
    completed: int = 0
    failed: int = 0
    owed: list[Owed] = field(default_factory=list)
    diverged: str | None = None  # why the exact replay was abandoned, if it was


def _is_final(t: TrialRecord) -> bool:
    return t.status == COMPLETE or (t.status == FAILED and not t.interrupted)


def replay(make_searcher: Callable[[], Searcher], trials: Sequence[TrialRecord],
           first: int = 0) -> tuple[Searcher, ReplayResult]:
    """A searcher in the state the study's driver left it, and the candidates still owed.

    ``first``: the trial the current strategy took over at (``resume --searcher``); the trials
    before it came from an earlier strategy, are told by ``make_searcher`` itself, and are only
    counted here (what that strategy left in flight is not owed to this one).
    """
    earlier = [t for t in trials if t.number < first and _is_final(t)]
    trials = sorted((t for t in trials if t.number >= first), key=lambda t: t.number)
    # rows written before told_after existed are told lazily, last
    big = max((t.number for t in trials), default=0) + 2
    by_number = {t.number: t for t in trials}

    def root(t: TrialRecord) -> int:
        while t.retry_of is not None and t.retry_of in by_number:
            t = by_number[t.retry_of]
        return t.number

    def told_by(t: TrialRecord) -> int:
        return big if t.told_after is None else t.told_after

    final: dict[int, TrialRecord] = {}
    last_try: dict[int, int] = {}
    for t in trials:
        r = root(t)
        last_try[r] = t.number
        if _is_final(t):
            final[r] = t
    events = deque(sorted(final.items(), key=lambda rt: (
        told_by(rt[1]), rt[1].finished_at or rt[1].started_at, rt[1].number)))
    counted = [*final.values(), *earlier]
    result = ReplayResult(
        completed=sum(1 for t in counted if t.status == COMPLETE),
        failed=sum(1 for t in counted if t.status != COMPLETE))

    searcher = make_searcher()
    asked: set[int] = set()

    def tell_next() -> bool:
        if not events or events[0][0] not in asked:
            return False
        r, t = events.popleft()
        searcher.tell([Evaluation(by_number[r].candidate, t.objective)])
        return True

    for t in trials if not searcher.keeps_own_state else ():
        if t.retry_of is not None:
            continue  # re-dispatched by a driver, not asked of the searcher
        while events and told_by(events[0][1]) <= t.number and tell_next():
            pass
        got = searcher.ask(1)
        while not got and tell_next():
            got = searcher.ask(1)
        if not got or got[0].choices != t.choices or got[0].samples != t.samples:
            proposed = "nothing" if not got else f"{list(got[0].choices)}"
            result.diverged = (f"trial {t.number}: the searcher now proposes {proposed}, the "
                               f"study has {list(t.choices)}")
            break
        asked.add(t.number)
    if searcher.keeps_own_state:  # it continues from its own store; tell it what it may lack
        searcher.tell([Evaluation(by_number[r].candidate, t.objective)
                       for r, t in sorted(final.items())])
        asked = set(last_try)
    elif result.diverged is None:
        while tell_next():
            pass
    else:  # fall back: a fresh searcher that knows every stored result
        searcher = make_searcher()
        searcher.tell([Evaluation(by_number[r].candidate, t.objective)
                       for r, t in sorted(final.items())])
        asked = set(last_try)
    result.owed = [Owed(by_number[r].candidate, last_try[r])
                   for r in sorted(asked) if r not in final]
    return searcher, result


class RequeueSearcher(Searcher):
    """Proposes the owed candidates first, then whatever the wrapped searcher asks for.

    Everything is told to the wrapped searcher (it asked for the owed ones, so it expects them).
    :meth:`retry_of` tells the recorder which trial a proposed candidate retries.
    """

    name = "requeue"

    def __init__(self, inner: Searcher, owed: Sequence[Owed]) -> None:
        super().__init__(inner.space, inner.budget, inner.seed)
        self.inner = inner
        self.owed = deque(owed)
        self._retries: dict[Candidate, int] = {}

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while self.owed and len(out) < n:
            item = self.owed.popleft()
            self._retries[item.candidate] = item.last_trial
            out.append(item.candidate)
        if len(out) < n:
            out += self.inner.ask(n - len(out))
        return out

    def retry_of(self, candidate: Candidate) -> int | None:
        return self._retries.pop(candidate, None)

    def tell(self, results: Sequence[Evaluation]) -> None:
        self.inner.tell(results)

    @property
    def finished(self) -> bool:
        return not self.owed and self.inner.finished

    def state(self) -> dict[str, Any]:
        return self.inner.state()
