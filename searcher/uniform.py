"""Uniform baselines: every layer at the same option, once per option the whole space offers.

They are the yardstick each search result is shown against. Baselines over the budget are still
proposed by default (uniform 8-bit shows how close to lossless the space gets); they are stored
as infeasible and never reported as a best configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher, SearcherParams


class UniformParams(SearcherParams):
    include_infeasible: bool = True


class UniformSearcher(Searcher):
    name = "uniform"
    Params = UniformParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, UniformParams)
        queue = [self.space.uniform(o) for o in self.space.uniform_options()]
        if not self.params.include_infeasible:
            queue = [c for c in queue if self.feasible(c)]
        self._queue = [Candidate(c.choices, origin=self.name) for c in queue]

    def ask(self, n: int) -> list[Candidate]:
        batch, self._queue = self._queue[:n], self._queue[n:]
        return batch

    def tell(self, results: Sequence[Evaluation]) -> None:
        """A baseline already evaluated (e.g. stored by an earlier run) is not proposed again."""
        done = {r.candidate.choices for r in results if r.ok}
        self._queue = [c for c in self._queue if c.choices not in done]

    @property
    def finished(self) -> bool:
        return not self._queue
