"""Random search: independent uniformly drawn configurations, each repaired into the budget.

The floor every other strategy must beat. A draw over budget is lowered one random level at a
time until it fits, so every proposal is feasible; draws already proposed are skipped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher
from .levels import LevelMap, as_candidate, repair_down

_MAX_DRAWS = 100  # draws tried per proposal before concluding the space is exhausted


class RandomSearcher(Searcher):
    name = "random"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rng = random.Random(self.seed)
        self.levels = LevelMap(self.space)
        self.seen: set[tuple[int, ...]] = set()
        self._exhausted = False

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n):
            for _ in range(_MAX_DRAWS):
                choices = [self.rng.randrange(k) for k in self.space.sizes]
                if repair_down(choices, self.levels, self.budget, self.rng) and \
                        tuple(choices) not in self.seen:
                    self.seen.add(tuple(choices))
                    out.append(as_candidate(choices, self.name))
                    break
            else:
                self._exhausted = True
                break
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        self.seen.update(r.candidate.choices for r in results)

    @property
    def finished(self) -> bool:
        return self._exhausted
