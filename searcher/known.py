"""A strategy continued on a study it did not start: a stored configuration is never evaluated again.

``resume --searcher`` gives a study another strategy, told every stored trial first. Strategies
avoid what they were told in their own ways (evolution's seen set, Optuna's known draws) or not
at all (a random draw, an integer program's optimum evaluated by the earlier strategy). This
wrapper answers a proposal already completed at that fidelity with its known result, at once,
and asks again; a proposal equal to one in flight is told that one's result when it arrives.
The strategy learns every answer (each asked candidate is still told exactly once), and the
study holds no configuration twice. It is deterministic, so a resumed driver replays it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher

_ASKS_PER_CALL = 50  # rounds of re-asking within one ask() before returning what there is

Key = tuple[tuple[int, ...], int | None]


def _key(c: Candidate) -> Key:
    return c.choices, c.samples


class KnownResultsSearcher(Searcher):
    """Wraps ``inner``; see the module doc."""

    name = "known-results"

    def __init__(self, inner: Searcher) -> None:
        super().__init__(inner.space, inner.budget, inner.seed, context=inner.context)
        self.inner = inner
        self.known: dict[Key, float] = {}  # completed: (choices, samples) → objective
        self.in_flight: set[Key] = set()
        self.twins: dict[Key, list[Candidate]] = {}  # proposed again while in flight

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(_ASKS_PER_CALL):
            got = self.inner.ask(n - len(out))
            if not got:
                break
            answered = []
            for c in got:
                key = _key(c)
                if key in self.known:
                    answered.append(Evaluation(c, self.known[key]))
                elif key in self.in_flight:
                    self.twins.setdefault(key, []).append(c)
                else:
                    self.in_flight.add(key)
                    out.append(c)
            if answered:
                self.inner.tell(answered)
            if len(out) >= n or len(answered) + len(out) == 0:
                break
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        told: list[Evaluation] = []
        for r in results:
            key = _key(r.candidate)
            self.in_flight.discard(key)
            if r.ok:
                assert r.objective is not None
                self.known[key] = min(r.objective, self.known.get(key, r.objective))
            told.append(r)
            told += [Evaluation(c, r.objective) for c in self.twins.pop(key, [])]
        self.inner.tell(told)

    @property
    def finished(self) -> bool:
        return self.inner.finished and not self.twins

    @property
    def keeps_own_state(self) -> bool:
        return self.inner.keeps_own_state

    def state(self) -> dict[str, Any]:
        return self.inner.state()
