"""A frontier in one study: one strategy per budget, every evaluation shared by all of them.

``budget.avg_bits: [3.0, 3.5, 4.0, 4.5]`` builds the configured strategy once per budget point
and runs them side by side behind this wrapper:

* **Each point is told its own band.** A point's strategy is told what it asked for, the
  uniform baselines, and every result that does not fit the next tighter budget: the
  measurements over every budget (the integer program at 4.5 bits takes the single-gene probes
  the 3.0 search measured into its profile) and the configurations of its own band. A
  configuration that fits a tighter budget belongs to that point's search: told to the looser
  point, evolution there adopted it as its parent whenever it beat the parent, and then spent the
  slack by random fills, which left the 4-bit search 6-8 % worse than a study of its own on the
  synthetic benchmark (3 of 3 seeds, beside a 3.5-bit point). Each point's strategy stays the
  plain single-budget strategy: it never proposes over its own budget.
* **No configuration is evaluated twice.** A proposal already completed is answered with its
  known result at once, and the strategy is asked again; a proposal in flight for another point
  is not dispatched again (its result, told to every point when it arrives, answers it). So the
  uniform baselines, the profile probes and the proxy anchors are measured once for the whole
  frontier: every point's strategy asks for the same ones.
* **Evaluations are split by need.** Each free slot goes to the point whose strategy has had the
  fewest evaluations dispatched for it (ties: the tightest budget first), among those with
  something to propose. A strategy that finishes early (the integer program after its optima)
  leaves the rest to the others. Evolution therefore keeps one (1+λ) parent per budget, rather
  than one population shared by all budgets.

It is deterministic for a seed given the same sequence of results, like every strategy, so a
resumed study replays it exactly (``cluster/resume.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher
from .uniform import UniformSearcher

_ASKS_PER_CALL = 50  # rounds of re-asking within one ask() before returning what there is

Key = tuple[tuple[int, ...], int | None]


def _key(c: Candidate) -> Key:
    return c.choices, c.samples


class FrontierSearcher(Searcher):
    """One strategy per budget point, tightest first (see the module doc); its own ``budget``
    is the loosest point's, the bound a trial must meet to be feasible for the study."""

    name = "frontier"

    def __init__(self, points: Sequence[Searcher]) -> None:
        assert points, "at least one budget point"
        loosest = points[-1]
        super().__init__(loosest.space, loosest.budget, loosest.seed, context=loosest.context)
        self.points = list(points)
        self.dispatched = [0] * len(points)  # evaluations sent for each point
        self.known: dict[Key, float | None] = {}  # told: (choices, samples) → objective
        self.in_flight: set[Key] = set()
        self.asked_by: dict[Key, set[int]] = {}  # in flight → the points that asked for it

    def _order(self) -> list[int]:
        return sorted((i for i, p in enumerate(self.points) if not p.finished),
                      key=lambda i: (self.dispatched[i], i))

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        idle: set[int] = set()  # points with nothing to propose in this call
        for _ in range(_ASKS_PER_CALL * max(n, 1)):
            order = [i for i in self._order() if i not in idle]
            if len(out) >= n or not order:
                break
            i = order[0]
            got = self.points[i].ask(1)
            if not got:
                idle.add(i)
                continue
            c = got[0]
            key = _key(c)
            if key in self.known and self.known[key] is not None:
                self.points[i].tell([Evaluation(c, self.known[key])])
            elif key not in self.in_flight:
                self.in_flight.add(key)
                self.asked_by[key] = {i}
                self.dispatched[i] += 1
                out.append(c)
            else:  # in flight for another point: its result answers this ask too
                self.asked_by[key].add(i)
        return out

    def _told_to(self, i: int, r: Evaluation, askers: set[int]) -> bool:
        """Whether point ``i`` learns ``r``: it asked, it is a baseline, or it fits no tighter
        point (a measurement, or a configuration of ``i``'s band or a looser one)."""
        if i in askers or i == 0 or r.candidate.origin == UniformSearcher.name:
            return True
        return not self.space.feasible(r.candidate, self.points[i - 1].budget)

    def tell(self, results: Sequence[Evaluation]) -> None:
        askers: list[set[int]] = []
        for r in results:
            key = _key(r.candidate)
            self.in_flight.discard(key)
            askers.append(self.asked_by.pop(key, set()))
            if r.ok or key not in self.known:
                self.known[key] = r.objective
        for i, point in enumerate(self.points):
            told = [r for r, who in zip(results, askers, strict=True) if self._told_to(i, r, who)]
            if told:
                point.tell(told)

    @property
    def finished(self) -> bool:
        return all(p.finished for p in self.points)

    @property
    def keeps_own_state(self) -> bool:
        return any(p.keeps_own_state for p in self.points)

    def state(self) -> dict[str, Any]:
        return {"points": [{"budget": p.budget.describe(), "dispatched": n, **p.state()}
                           for p, n in zip(self.points, self.dispatched, strict=True)]}
