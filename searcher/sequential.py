"""Running strategies one after another: e.g. the uniform baselines, then the real search.

A stage hands over only when it is finished *and* all its candidates have been told, so the next
stage starts from complete knowledge (evolution starts from the best baseline). Every result is
told to every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher


class SequentialSearcher(Searcher):
    name = "sequential"

    def __init__(self, stages: Sequence[Searcher]) -> None:
        assert stages, "at least one stage"
        first = stages[0]
        super().__init__(first.space, first.budget, first.seed)
        self.stages = list(stages)
        self.current = 0
        self.outstanding = 0  # asked by the current stage and not yet told

    def _advance(self) -> None:
        while (self.current < len(self.stages) - 1 and self.stages[self.current].finished
               and self.outstanding == 0):
            self.current += 1

    def ask(self, n: int) -> list[Candidate]:
        self._advance()
        stage = self.stages[self.current]
        if stage.finished:
            return []
        out = stage.ask(n)
        self.outstanding += len(out)
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        self.outstanding = max(self.outstanding - len(results), 0)
        for stage in self.stages:
            stage.tell(results)

    @property
    def keeps_own_state(self) -> bool:
        return any(stage.keeps_own_state for stage in self.stages)

    @property
    def finished(self) -> bool:
        return self.current == len(self.stages) - 1 and self.stages[-1].finished

    def state(self) -> dict[str, Any]:
        return {"current": self.current, "stages": [s.state() for s in self.stages]}
