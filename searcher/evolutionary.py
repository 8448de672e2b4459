"""EvoPress-style (1+λ) evolutionary search: budget-keeping level switches, multi-step selection.

Sieberling et al., "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search"
(2024): each generation draws λ offspring from the parent by *level switches* (raise one gene a
level, lower others until the budget holds again, so offspring stay feasible whatever the layer
sizes) and the best of parent and offspring becomes the next parent.

Multi-step selection (EvoPress §3.2): offspring are screened on few calibration samples and only
the best are re-scored on more. ``selection`` is a list of ``[count, samples]`` stages:

* stage 1 scores ``count`` offspring (that is λ) on the first ``samples`` calibration samples;
* each later stage re-scores the best ``count`` of the previous stage on its ``samples``;
* the best of the last stage replaces the parent if it beats the parent's score on the last
  stage's samples. The parent is re-scored there when its score on those samples is unknown.

``[[16, 8], [4, 32]]`` keeps 4 of 16 offspring scored on 8 samples and re-scores them on 32
(``null`` samples = all of them). EvoPress's own schedule is 128 → 16 on 2,048 tokens → 4 on
16,384 → 1 on 131,072. Workers score a fixed set (the *first* ``samples``), so a configuration is
never scored twice at one fidelity: a known score is reused. Without ``selection`` there is one
stage, ``[[offspring, null]]``: the behaviour of earlier studies.

The generation is the unit of selection: offspring may be evaluated in any order on any number of
workers and the outcome is the same, so the search is deterministic for a seed. Any feasible
result told at the last stage's fidelity (a baseline, a hybrid's re-solved program) that beats
the parent becomes the parent at the next selection.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pydantic import Field, model_validator

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher, SearcherParams
from .levels import LevelMap, as_candidate, fill_up, switch_levels

_MAX_TRIES = 200  # mutation attempts per offspring before concluding no new one exists
_INF = float("inf")


class EvolutionaryParams(SearcherParams):
    # Offspring per generation (λ). EvoPress uses large λ with multi-fidelity screening; at one
    # fidelity, 16 keeps two to eight workers busy and still selects often.
    offspring: int = Field(default=16, ge=1)
    # Each offspring makes 1..max_switches level raises (each repaired by lowerings).
    max_switches: int = Field(default=2, ge=1)
    # After the switch, raise random genes while the budget holds: with layers of unequal sizes
    # a switch leaves bits unspent, and without it the search stalls a few percent short.
    fill: bool = True
    # Multi-step selection stages [[count, samples], ...] (see the module doc); None: one stage.
    selection: list[tuple[int, int | None]] | None = None

    @model_validator(mode="after")
    def _check_selection(self) -> EvolutionaryParams:
        if self.selection is None:
            return self
        if not self.selection:
            raise ValueError("selection: give at least one [count, samples] stage, or null")
        counts = [c for c, _ in self.selection]
        if any(c < 1 for c in counts) or counts != sorted(counts, reverse=True):
            raise ValueError(f"selection: counts must be >= 1 and non-increasing, got {counts}")
        if any(s is not None and s < 1 for _, s in self.selection):
            raise ValueError("selection: samples must be >= 1 or null (all)")
        if "offspring" in self.model_fields_set and self.offspring != counts[0]:
            raise ValueError(f"offspring ({self.offspring}) must equal the first selection count "
                             f"({counts[0]}), or be left out")
        return self

    def stages(self) -> list[tuple[int, int | None]]:
        return list(self.selection) if self.selection else [(self.offspring, None)]


class EvolutionarySearcher(Searcher):
    name = "evolutionary"
    Params = EvolutionaryParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, EvolutionaryParams)
        self.p: EvolutionaryParams = self.params
        self.stages = self.p.stages()
        self.final_samples = self.stages[-1][1]
        self.rng = random.Random(self.seed)
        self.levels = LevelMap(self.space)
        self.parent: Candidate | None = None
        self.generation = 0
        self.stage = 0
        self.pool: list[Candidate] = []  # this stage's configurations (fidelity-free), in order
        self.asked: set[tuple[tuple[int, ...], int | None]] = set()  # asked, not yet told
        self.scores: dict[tuple[tuple[int, ...], int | None], float] = {}  # inf = failed
        self.seen: set[tuple[int, ...]] = set()
        self.drawn_out = False  # this generation's parent has no unseen neighbour left
        self.best_told: dict[int | None, tuple[float, Candidate]] = {}  # per fidelity, feasible

    # -- the start ---------------------------------------------------------------------------
    def _start(self) -> Candidate:
        """The best feasible result told so far (e.g. a uniform baseline), else a random fill."""
        for samples in (self.final_samples, None):
            if samples in self.best_told:
                return Candidate(self.best_told[samples][1].choices, origin=self.name)
        choices = list(self.space.cheapest().choices)
        fill_up(choices, self.levels, self.budget, self.rng)
        return as_candidate(choices, f"{self.name}:start")

    @property
    def parent_score(self) -> float | None:
        if self.parent is None:
            return None
        return self.scores.get((self.parent.choices, self.final_samples))

    # -- mutation ----------------------------------------------------------------------------
    def mutate(self, parent: Candidate) -> Candidate | None:
        for _ in range(_MAX_TRIES):
            choices = list(parent.choices)
            if not switch_levels(choices, self.levels, self.budget, self.rng, self.p.max_switches,
                                 self.p.fill):
                continue
            if tuple(choices) not in self.seen and tuple(choices) != parent.choices:
                return as_candidate(choices, f"{self.name}:g{self.generation}")
        return None

    # -- ask/tell ----------------------------------------------------------------------------
    def _request(self, candidate: Candidate, samples: int | None, out: list[Candidate]) -> None:
        key = (candidate.choices, samples)
        if key not in self.scores and key not in self.asked:
            self.asked.add(key)
            out.append(candidate.at_fidelity(samples))

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        if self.parent is None:
            self.parent = self._start()
            self.seen.add(self.parent.choices)
        if self.parent_score is None and self.stage == 0 and not self.pool:
            # generation 0: the parent alone, on the last stage's samples
            self._request(self.parent, self.final_samples, out)
            self._advance()
            return out
        count, samples = self.stages[self.stage]
        if self.stage == 0:
            while len(out) < n and len(self.pool) < count:
                child = self.mutate(self.parent)
                if child is None:
                    self.drawn_out = True
                    break
                self.seen.add(child.choices)
                self.pool.append(child)
                self._request(child, samples, out)
        else:
            for c in self.pool:
                if len(out) >= n:
                    break
                self._request(c, samples, out)
        if self.stage == len(self.stages) - 1 and len(out) < n:
            self._request(self.parent, samples, out)
        self._advance()
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        for r in results:
            c = r.candidate
            self.seen.add(c.choices)
            key = (c.choices, c.samples)
            self.asked.discard(key)
            score = _INF if r.objective is None else r.objective
            self.scores[key] = min(score, self.scores.get(key, _INF))
            if r.ok and self.feasible(c):
                best = self.best_told.get(c.samples)
                if best is None or score < best[0]:
                    self.best_told[c.samples] = (score, c)
        self._advance()

    # -- selection ---------------------------------------------------------------------------
    def _advance(self) -> None:
        """Move to the next stage (or generation) once every score of this one is known."""
        while self.parent is not None and not self.asked:
            if self.parent_score is None and self.stage == 0 and not self.pool:
                return  # generation 0 not yet asked
            count, samples = self.stages[self.stage]
            if self.stage == 0 and len(self.pool) < count and not self.drawn_out:
                return  # offspring still to be drawn
            last = self.stage == len(self.stages) - 1
            if any((c.choices, samples) not in self.scores for c in self.pool) or (
                    last and self.parent_score is None):
                return
            ranked = sorted(range(len(self.pool)),
                            key=lambda i: (self.scores[(self.pool[i].choices, samples)], i))
            ranked = [i for i in ranked if self.scores[(self.pool[i].choices, samples)] < _INF]
            if not last and ranked:
                self.pool = [self.pool[i] for i in ranked[: self.stages[self.stage + 1][0]]]
                self.stage += 1
                continue
            self._select()
            return

    def _select(self) -> None:
        best = self.best_told.get(self.final_samples)
        assert self.parent is not None
        if best is not None and best[0] < (self.parent_score or _INF):
            self.parent = Candidate(best[1].choices, origin=self.name)
        self.pool, self.stage, self.drawn_out = [], 0, False
        self.generation += 1

    def state(self) -> dict[str, Any]:
        return {"generation": self.generation, "stage": self.stage,
                "parent": None if self.parent is None else list(self.parent.choices),
                "parent_score": self.parent_score}
