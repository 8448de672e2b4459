"""The integer-programming strategy: measure (or take) a profile, propose the knapsack's optima.

It first completes the sensitivity profile through ask/tell (see :mod:`.profiling`), then solves
the multiple-choice knapsack of :mod:`.integer_program` (or the dynamic program) at the budget
and proposes the optimum, followed by the optima of a budget sweep just below it: distinct,
feasible configurations the additive model ranks next. Then it is finished.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Budget, Candidate, SearchSpace

from .base import Evaluation, Needs, SearchContext, Searcher, SearcherParams
from .dynamic_program import dp_frontier, solve_dp
from .integer_program import Knapsack, Solution, pareto_sweep, solve
from .levels import LevelMap, budget_bits_per_weight, repair_down
from .profiling import (
    ProfileMeasurer,
    loss_matrix,
    normalize_profile,
    proxy_anchors,
    shared_expert_anchors,
    wanted_entries,
)


def _multiple(w: np.ndarray, base: np.ndarray) -> float | None:
    """``a > 0`` with ``w == a · base`` (to float precision), or None."""
    total = float(base.sum())
    if total <= 0:
        return None
    a = float(w.sum()) / total
    return a if a > 0 and np.allclose(w, a * base, rtol=1e-12, atol=0) else None


def knapsack_for(space: SearchSpace, budget: Budget, loss: np.ndarray) -> Knapsack:
    """The knapsack of ``space`` under ``budget`` with the (genes × options) ``loss``: one row
    per budget row (``SearchSpace.constraints``), rows that are multiples of an earlier one
    merged into it with the tighter capacity (avg_bits and total_bytes bound the same bits; so
    does a memory budget whose KV cache is not searched), so such budgets stay one resource."""
    rows: list[np.ndarray] = []
    caps: list[float] = []
    for row in space.constraints(budget):
        w = np.zeros(loss.shape)
        for g, costs in enumerate(row.costs):
            w[g, :len(costs)] = costs
        for i, base in enumerate(rows):
            a = _multiple(w, base)
            if a is not None:
                caps[i] = min(caps[i], row.capacity / a)
                break
        else:
            rows.append(w)
            caps.append(row.capacity)
    if not rows:  # no bound: the stored bits, with room for every gene's most expensive option
        w = np.zeros(loss.shape)
        for g, n in enumerate(space.sizes):
            w[g, :n] = [space.gene_bits(g, o) for o in range(n)]
        rows, caps = [w], [float(w.max(axis=1).sum())]
    return Knapsack(loss, np.stack(rows), np.array(caps))


class ProfileParams(SearcherParams):
    # Option labels whose profile entries are measured and offered to the program (plus each
    # gene's top option, the base); None: every option. Fewer labels, fewer probe evaluations.
    profile_options: list[str] | None = None
    # Calibration samples per probe (None: all); a cheaper, noisier profile.
    profile_samples: int | None = Field(default=None, ge=1)
    # Measure one option per gene and scale the others by the proxy (``context.proxy``, which
    # the job runner computes on a worker): one probe per gene instead of one per option.
    # ``true``/``hessian``: the Hessian-weighted output error tr(ΔW H ΔWᵀ); ``fisher``: the
    # Fisher estimate ½ΣF·ΔW² of the objective's change (workers/fisher.py).
    # ``kfac``: its Kronecker-factored form ¼Σ_i S_i (ΔW H ΔWᵀ)_ii, which keeps the input
    # correlations GPTQ exploits (the diagonal overestimates GPTQ options 5-33× on MiniLM).
    proxy: bool | Literal["hessian", "fisher", "kfac"] = False
    # With a proxy: measure one anchor option per gene and scale the gene's others by it. false
    # (``proxy: fisher`` only, whose values are on the objective's scale): take the proxy as
    # the profile itself, no probe at all.
    anchors: bool = True

    @property
    def proxy_kind(self) -> str | None:
        """``hessian``, ``fisher`` or None (no proxy)."""
        if self.proxy is False:
            return None
        return "hessian" if self.proxy is True else self.proxy

    @model_validator(mode="after")
    def _check_anchors(self) -> ProfileParams:
        if not self.anchors and self.proxy_kind not in ("fisher", "kfac"):
            raise ValueError("anchors: false needs proxy: fisher or kfac (the Hessian-weighted "
                             "error is not on the objective's scale: its anchors scale it)")
        return self

    # MC-MoE (MoE models, with a proxy): weight each routed expert's proxy by the fraction
    # of calibration tokens routed to it, and let the experts of one MoE layer share one probe
    # (of its most-routed expert), the others predicted from it by their weighted proxies.
    routing: bool = False

    @model_validator(mode="after")
    def _routing_needs_proxy(self) -> ProfileParams:
        if self.routing and not self.proxy:
            raise ValueError("routing: true weights the proxies, so it needs proxy: true")
        if self.routing and not self.anchors:
            raise ValueError("routing: true shares anchors between experts, and anchors: false "
                             "has none (the Fisher proxy counts each expert's tokens already); "
                             "drop routing")
        return self


def profile_needs(params: SearcherParams) -> Needs:
    """A profile-driven strategy's needs: the stored profile, proxies with ``proxy``, and the
    routing fractions with ``routing: true``."""
    kind = params.proxy_kind if isinstance(params, ProfileParams) else None
    return Needs(profile=True, proxy=kind is not None, proxy_kind=kind or "hessian",
                 routing=bool(getattr(params, "routing", False)))


def profile_measurer(space: SearchSpace, budget: Budget, p: ProfileParams, context: SearchContext,
                     origin: str) -> ProfileMeasurer:
    """What a profile-driven strategy measures first: the entries ``p`` asks for, less those of
    the given profile (``context.profile``); with ``p.proxy``, one anchor per gene."""
    given = normalize_profile(space, context.profile or {})
    wanted = wanted_entries(space, p.profile_options)
    if p.proxy_kind is None:
        return ProfileMeasurer(space, wanted, given, p.profile_samples, origin)
    if not context.proxy:
        raise SpecError(f"searcher: proxy: {p.proxy} needs the proxy errors of the space (the "
                        "job runner computes them on a worker; pass SearchContext(proxy=...))")
    proxy = normalize_profile(space, context.proxy)
    if not p.anchors:  # the proxy is the profile: nothing to measure
        taken = {key: proxy[key] for key in wanted if key in proxy}
        return ProfileMeasurer(space, wanted, {**taken, **given}, p.profile_samples, origin)
    anchors = proxy_anchors(space, wanted, proxy, budget_bits_per_weight(space, budget))
    if p.routing and context.routing is None:
        raise SpecError("searcher: routing: true needs the routing fractions of the experts "
                        "(the job runner counts them on a worker; pass SearchContext(routing=...))")
    shared = shared_expert_anchors(space, anchors, context.routing) if p.routing else None
    return ProfileMeasurer(space, wanted, given, p.profile_samples, origin, proxy, anchors,
                           shared)


class IntegerProgramParams(ProfileParams):
    solver: Literal["milp", "dp"] = "milp"
    # Configurations proposed: the optimum at the budget, then the optima of a budget sweep
    # down to (1 - sweep) × budget, distinct and non-dominated under the profile.
    solutions: int = Field(default=1, ge=1)
    sweep: float = Field(default=0.05, ge=0, lt=1)
    # Seconds HiGHS may take per solve; past it the best of MILP and Lagrangian greedy is used.
    time_limit: float = Field(default=60.0, gt=0)


def check_solver(space: SearchSpace, budget: Budget, solver: str) -> None:
    """SpecError when ``solver`` cannot take ``budget`` (the dynamic program: one resource)."""
    rows = len(knapsack_for(space, budget, np.zeros((len(space.genes), max(space.sizes)))).caps)
    if solver == "dp" and rows > 1:
        raise SpecError(f"searcher.solver: dp solves one resource, budget {budget.describe()} "
                        f"has {rows} independent rows; use solver: milp")


def solve_profile(space: SearchSpace, budget: Budget, loss: np.ndarray, p: IntegerProgramParams,
                  count: int | None = None) -> list[Solution]:
    """Up to ``count`` optima for the (genes × options) ``loss``: the one at the budget first,
    then a sweep below it."""
    problem = knapsack_for(space, budget, loss)
    check_solver(space, budget, p.solver)
    count = p.solutions if count is None else count
    cap = float(problem.caps[0])
    first = solve_dp(problem) if p.solver == "dp" else solve(problem, p.time_limit)
    if count == 1 or p.sweep == 0:
        return [first]
    caps = np.linspace(cap * (1 - p.sweep), cap, 4 * count)
    front = dp_frontier(problem, caps) if p.solver == "dp" else \
        pareto_sweep(problem, caps, time_limit=p.time_limit)
    out, seen = [first], {tuple(first.choices)}
    for s in sorted(front, key=lambda s: -s.use[0]):
        if tuple(s.choices) not in seen and len(out) < count:
            seen.add(tuple(s.choices))
            out.append(s)
    return out


def as_feasible(space: SearchSpace, budget: Budget, choices: Iterable[int], origin: str,
                levels: LevelMap, seed: int) -> Candidate | None:
    """The solution as a candidate, lowered into the budget if float rounding pushed it over."""
    fixed = [int(c) for c in choices]
    if not space.feasible(Candidate(tuple(fixed)), budget) and \
            not repair_down(fixed, levels, budget, random.Random(seed)):
        return None
    return Candidate(tuple(fixed), origin=origin)


class IntegerProgramSearcher(Searcher):
    name = "integer-program"
    Params = IntegerProgramParams

    @classmethod
    def needs(cls, params: SearcherParams) -> Needs:
        return profile_needs(params)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, IntegerProgramParams)
        self.p: IntegerProgramParams = self.params
        self.space.check_budget(self.budget)
        check_solver(self.space, self.budget, self.p.solver)
        self.levels = LevelMap(self.space)
        self.measurer = profile_measurer(self.space, self.budget, self.p, self.context, self.name)
        self.queue: list[Candidate] | None = None  # solutions, once solved
        self.solutions: list[Solution] = []

    def ask(self, n: int) -> list[Candidate]:
        if not self.measurer.done:
            return self.measurer.ask(n)
        if self.queue is None:
            loss = loss_matrix(self.space, self.measurer.profile(), self.measurer.wanted)
            self.solutions = solve_profile(self.space, self.budget, loss, self.p)
            self.queue = []
            for i, s in enumerate(self.solutions):
                c = as_feasible(self.space, self.budget, s.choices, f"{self.name}:{i}",
                                self.levels, self.seed)
                if c is not None:
                    self.queue.append(c)
        batch, self.queue = self.queue[:n], self.queue[n:]
        return batch

    def tell(self, results: Sequence[Evaluation]) -> None:
        self.measurer.tell(results)

    @property
    def finished(self) -> bool:
        return self.queue is not None and not self.queue
