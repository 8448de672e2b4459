"""Population-based EvoPress for many workers: steady-state (μ + 1) evolution.

The (1+λ) search waits for a whole generation before it selects, so workers idle at the end of
each one. Here every free slot gets a child at once: two parents drawn by tournament from the
μ best feasible configurations told so far, uniform crossover (each gene from either parent),
lowered into the budget if the mix went over, then one EvoPress level switch. Each told result
enters the population if it beats its worst member. Deterministic for a seed given the same
sequence of results (the base contract); with one worker, the same sequence of candidates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher, SearcherParams
from .levels import LevelMap, as_candidate, fill_up, repair_down, switch_levels

_MAX_TRIES = 200


class PopulationParams(SearcherParams):
    # μ: configurations kept; the first μ proposals are random fills of the budget (or the best
    # results told earlier, e.g. baselines, take their places).
    population: int = Field(default=16, ge=2)
    tournament: int = Field(default=3, ge=1)
    # Probability that a child mixes two parents before its level switch.
    crossover: float = Field(default=0.5, ge=0, le=1)
    max_switches: int = Field(default=2, ge=1)


class PopulationEvolutionarySearcher(Searcher):
    name = "evolutionary-population"
    Params = PopulationParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, PopulationParams)
        self.p: PopulationParams = self.params
        self.rng = random.Random(self.seed)
        self.levels = LevelMap(self.space)
        self.members: list[tuple[float, tuple[int, ...]]] = []  # the μ best, sorted
        self.seen: set[tuple[int, ...]] = set()
        self.initial = 0  # random fills proposed so far

    def _pick(self) -> tuple[int, ...]:
        entrants = [self.rng.randrange(len(self.members)) for _ in range(self.p.tournament)]
        return self.members[min(entrants)][1]

    def _child(self) -> Candidate | None:
        for _ in range(_MAX_TRIES):
            if len(self.members) < 2 or self.initial < self.p.population - len(self.members):
                choices = list(self.space.cheapest().choices)
                # the fewest bits may miss a row that does not fall with the bits (a latency)
                if not repair_down(choices, self.levels, self.budget, self.rng):
                    continue
                fill_up(choices, self.levels, self.budget, self.rng)
                origin = f"{self.name}:init"
            else:
                choices = list(self._pick())
                if self.rng.random() < self.p.crossover:
                    other = self._pick()
                    choices = [a if self.rng.random() < 0.5 else b
                               for a, b in zip(choices, other, strict=True)]
                    if not repair_down(choices, self.levels, self.budget, self.rng):
                        continue
                if not switch_levels(choices, self.levels, self.budget, self.rng,
                                     self.p.max_switches):
                    continue
                origin = self.name
            if tuple(choices) not in self.seen:
                return as_candidate(choices, origin)
        return None

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n):
            child = self._child()
            if child is None:
                break
            if child.origin.endswith(":init"):
                self.initial += 1
            self.seen.add(child.choices)
            out.append(child)
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            self.seen.add(r.candidate.choices)
            if not (r.ok and r.candidate.samples is None and self.feasible(r.candidate)):
                continue
            assert r.objective is not None
            entry = (r.objective, r.candidate.choices)
            if any(c == entry[1] for _, c in self.members):
                continue
            self.members.append(entry)
            self.members.sort()
            del self.members[self.p.population:]

    def state(self) -> dict[str, Any]:
        return {"population": [[s, list(c)] for s, c in self.members]}
