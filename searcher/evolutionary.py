"""EvoPress-style (1+λ) evolutionary search with budget-keeping level-switch mutations.

Sieberling et al., "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search"
(2024): each generation draws λ offspring from the parent by *level switches* (raise one gene a
level, lower others until the budget holds again, so offspring stay feasible whatever the layer
sizes) and the best of parent and offspring becomes the next parent.

The generation is the unit of selection: offspring may be evaluated in any order on any number of
workers and the outcome is the same, so the search is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher, SearcherParams
from .levels import LevelMap, as_candidate, fill_up, repair_down

_MAX_TRIES = 200  # mutation attempts per offspring before accepting a repeat is impossible


class EvolutionaryParams(SearcherParams):
    # Offspring per generation (λ). EvoPress uses large λ with multi-fidelity screening; at one
    # fidelity, 16 keeps two to eight workers busy and still selects often.
    offspring: int = Field(default=16, ge=1)
    # Each offspring makes 1..max_switches level raises (each repaired by lowerings).
    max_switches: int = Field(default=2, ge=1)


class EvolutionarySearcher(Searcher):
    name = "evolutionary"
    Params = EvolutionaryParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, EvolutionaryParams)
        self.p: EvolutionaryParams = self.params
        self.rng = random.Random(self.seed)
        self.levels = LevelMap(self.space)
        self.parent: Candidate | None = None
        self.parent_score: float | None = None
        self.generation = 0
        self.asked: list[Candidate] = []  # this generation's offspring, in ask order
        self.closed = False  # no more offspring this generation (λ reached, or mutation ran dry)
        self.scores: dict[int, float | None] = {}  # position in `asked` → objective
        self.seen: set[tuple[int, ...]] = set()
        self.best_told: tuple[float, Candidate] | None = None  # best feasible result told so far

    # -- the start ---------------------------------------------------------------------------
    def _start(self) -> Candidate:
        """The best feasible result told so far (e.g. a uniform baseline), else a random fill."""
        if self.best_told is not None:
            return Candidate(self.best_told[1].choices, origin=self.name)
        choices = list(self.space.cheapest().choices)
        fill_up(choices, self.levels, self.budget, self.rng)
        return as_candidate(choices, f"{self.name}:start")

    # -- mutation ----------------------------------------------------------------------------
    def mutate(self, parent: Candidate) -> Candidate | None:
        for _ in range(_MAX_TRIES):
            choices = list(parent.choices)
            raised: set[int] = set()
            for _ in range(self.rng.randint(1, self.p.max_switches)):
                raisable = [g for g, c in enumerate(choices)
                            if self.levels.level(g, c) < self.levels.top(g)]
                if not raisable:
                    break
                g = self.rng.choice(raisable)
                choices[g] = self.levels.option(g, self.levels.level(g, choices[g]) + 1)
                raised.add(g)
            if not repair_down(choices, self.levels, self.budget, self.rng, frozenset(raised)):
                continue
            if tuple(choices) not in self.seen and tuple(choices) != parent.choices:
                return as_candidate(choices, f"{self.name}:g{self.generation}")
        return None

    # -- ask/tell ----------------------------------------------------------------------------
    def ask(self, n: int) -> list[Candidate]:
        if self.parent is None:
            self.parent = self._start()
            if self.best_told is not None:
                self.parent_score = self.best_told[0]
            else:
                self.seen.add(self.parent.choices)
                self.asked, self.closed = [self.parent], True  # generation 0: the parent alone
                return [self.parent]
        out: list[Candidate] = []
        while len(out) < n and not self.closed and self.parent_score is not None:
            child = self.mutate(self.parent)
            if child is not None:
                self.seen.add(child.choices)
                self.asked.append(child)
                out.append(child)
            self.closed = child is None or len(self.asked) >= self.p.offspring
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            self.seen.add(r.candidate.choices)
            if r.ok and self.feasible(r.candidate):
                assert r.objective is not None
                if self.best_told is None or r.objective < self.best_told[0]:
                    self.best_told = (r.objective, r.candidate)
            for i, c in enumerate(self.asked):
                if c == r.candidate and i not in self.scores:
                    self.scores[i] = r.objective
                    break
        if self.closed and len(self.scores) == len(self.asked):
            self._select()

    def _select(self) -> None:
        scored = [(s, i) for i, s in self.scores.items() if s is not None]
        if self.parent_score is None:  # generation 0: the parent's own score
            self.parent_score = scored[0][0] if scored else float("inf")
        elif scored:
            score, i = min(scored)
            if score < self.parent_score:
                self.parent, self.parent_score = self.asked[i], score
        self.asked, self.scores, self.closed = [], {}, False
        self.generation += 1

    @property
    def finished(self) -> bool:
        return False

    def state(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "parent": None if self.parent is None else list(self.parent.choices),
                "parent_score": self.parent_score}
