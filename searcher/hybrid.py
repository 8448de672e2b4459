"""The hybrid: profile → integer program → its optima seed the evolutionary search.

1. *Profile*: given entries are taken, missing ones measured (:mod:`.profiling`).
2. *Seeds*: the knapsack's optimum at the budget and the optima of a sweep just below it
   (:mod:`.ip_searcher`), scored on the evolution's last-stage samples.
3. *Evolution*: EvoPress from the best seed (or a better result told earlier, e.g. a baseline);
   it measures what the additive model cannot see (interactions between layers).
4. *Re-solve* (every ``resolve_every`` generations, 0 = never): the profile is corrected by the
   measured results (ridge regression of the residual ``f(x) - a - Σ d[g, x_g]`` on one-hot
   (gene, option) features) and the program solved again; its optimum, when new, is evaluated
   and becomes the parent if it beats it.

Every evaluation, probes included, goes through ask/tell and counts toward the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from mpsearch.spaces.space import Candidate

from .base import Evaluation, Needs, Searcher, SearcherParams
from .evolutionary import EvolutionaryParams, EvolutionarySearcher
from .ip_searcher import (
    IntegerProgramParams,
    ProfileParams,
    as_feasible,
    check_solver,
    profile_measurer,
    profile_needs,
    solve_profile,
)
from .levels import LevelMap
from .profiling import loss_matrix


class HybridParams(ProfileParams):
    solver: Literal["milp", "dp"] = "milp"
    # Integer-program optima evaluated as seeds (the budget's optimum, then a sweep below it).
    seeds: int = Field(default=4, ge=1)
    sweep: float = Field(default=0.05, ge=0, lt=1)
    time_limit: float = Field(default=60.0, gt=0)
    # The evolution (see `evolutionary`).
    offspring: int = Field(default=16, ge=1)
    max_switches: int = Field(default=2, ge=1)
    selection: list[tuple[int, int | None]] | None = None
    # Generations between re-solves with corrected costs (0: never), and the correction's ridge
    # penalty per gene (larger: trust the profile more).
    resolve_every: int = Field(default=3, ge=0)
    ridge: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check_offspring(self) -> HybridParams:
        if (self.selection and "offspring" in self.model_fields_set
                and self.offspring != self.selection[0][0]):
            raise ValueError(f"offspring ({self.offspring}) must equal the first selection count "
                             f"({self.selection[0][0]}), or be left out")
        return self


def corrected_loss(loss: np.ndarray, choices: np.ndarray, values: np.ndarray,
                   ridge: float) -> np.ndarray:
    """``loss`` plus a ridge fit of the residual of measured ``values`` (rows of ``choices``).

    The model is ``f(x) ≈ a + Σ_g (loss + δ)[g, x_g]``; ``a`` absorbs the base objective and any
    fidelity offset. Solved in the dual (one equation per measurement), so it stays small for
    thousands of genes.
    """
    from scipy.sparse import csr_array

    n, n_genes = choices.shape
    rows = np.arange(n_genes)
    picked = loss[rows, choices]
    resid = values - np.where(np.isfinite(picked), picked, 0.0).sum(axis=1)
    resid = resid - resid.mean()  # the intercept a
    flat = choices + rows * loss.shape[1]  # one-hot column of each (gene, option)
    onehot = csr_array((np.ones(flat.size), (np.repeat(np.arange(n), n_genes), flat.ravel())),
                       shape=(n, loss.size))
    gram = (onehot @ onehot.T).toarray()
    gram -= gram.mean(axis=0, keepdims=True) + gram.mean(axis=1, keepdims=True) - gram.mean()
    alpha = np.linalg.solve(gram + ridge * n_genes * np.eye(n), resid)
    delta = np.zeros(loss.size)
    np.add.at(delta, flat.ravel(), np.repeat(alpha, n_genes))
    delta -= np.bincount(flat.ravel(), minlength=loss.size) * alpha.mean()
    return loss + delta.reshape(loss.shape)


class HybridSearcher(Searcher):
    name = "hybrid"
    Params = HybridParams

    @classmethod
    def needs(cls, params: SearcherParams) -> Needs:
        return profile_needs(params)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, HybridParams)
        self.p: HybridParams = self.params
        self.space.check_budget(self.budget)
        check_solver(self.space, self.budget, self.p.solver)
        self.levels = LevelMap(self.space)
        self.measurer = profile_measurer(self.space, self.budget, self.p, self.context, self.name)
        # the first selection stage is λ (EvolutionaryParams refuses a different offspring)
        offspring = self.p.selection[0][0] if self.p.selection else self.p.offspring
        evo = EvolutionaryParams(offspring=offspring, max_switches=self.p.max_switches,
                                 selection=self.p.selection)
        self.evolution = EvolutionarySearcher(self.space, self.budget, self.seed, evo)
        self.samples = self.evolution.final_samples
        self.ip = IntegerProgramParams(solver=self.p.solver, solutions=self.p.seeds,
                                       sweep=self.p.sweep, time_limit=self.p.time_limit)
        self.queue: list[Candidate] | None = None  # seeds and re-solved optima, not yet asked
        self.pending: set[tuple[int, ...]] = set()  # asked by the hybrid itself, not yet told
        self.told: dict[tuple[int, ...], float] = {}  # feasible results at `samples`
        self.resolved_at = 0  # generation of the last re-solve

    def _solve(self, count: int, loss_fix: bool) -> list[Candidate]:
        loss = loss_matrix(self.space, self.measurer.profile(), self.measurer.wanted)
        if loss_fix and self.told:
            choices = np.array(list(self.told), dtype=int)
            values = np.array(list(self.told.values()))
            loss = corrected_loss(loss, choices, values, self.p.ridge)
        out = []
        for i, s in enumerate(solve_profile(self.space, self.budget, loss, self.ip, count)):
            c = as_feasible(self.space, self.budget, s.choices, f"{self.name}:ip{i}", self.levels,
                            self.seed)
            if c is not None and c.choices not in self.told:
                out.append(c.at_fidelity(self.samples))
        return out

    def ask(self, n: int) -> list[Candidate]:
        if not self.measurer.done:
            return self.measurer.ask(n)
        if self.queue is None:
            self.queue = self._solve(self.p.seeds, loss_fix=False)
        gen = self.evolution.generation
        if self.p.resolve_every and gen - self.resolved_at >= self.p.resolve_every:
            self.resolved_at = gen
            self.queue.extend(self._solve(1, loss_fix=True))
        out: list[Candidate] = []
        while self.queue and len(out) < n:
            c = self.queue.pop(0)
            if c.choices not in self.pending and c.choices not in self.told:
                self.pending.add(c.choices)
                out.append(c)
        if self.evolution.parent is None and self.pending:
            return out  # evolution starts from the best seed: wait for all of them
        return out + self.evolution.ask(n - len(out))

    def tell(self, results: Sequence[Evaluation]) -> None:
        self.measurer.tell(results)
        for r in results:
            c = r.candidate
            if c.samples == self.samples:
                self.pending.discard(c.choices)
                if r.ok and self.feasible(c):
                    assert r.objective is not None
                    self.told[c.choices] = r.objective
        self.evolution.tell(results)

    def state(self) -> dict[str, Any]:
        return {"evolution": self.evolution.state(), "resolved_at": self.resolved_at}
