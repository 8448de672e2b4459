"""The one interface every search strategy implements: ask for candidates, tell their results.

Contract (who calls what):

* The loop calls ``ask(n)`` whenever ``n`` evaluation slots are free. A searcher returns *up to*
  ``n`` candidates; an empty list means "nothing to propose until results arrive". Once
  ``finished`` is true the searcher never proposes again.
* Every asked candidate is told back exactly once, through ``tell``, in any order, with
  ``objective=None`` if its evaluation failed. A searcher may also be told results it did not ask
  for (baselines, or the stored trials of a study being resumed) and should learn from them.
* Searchers never propose a configuration over the budget, and are deterministic for a seed
  given the same sequence of results.

Searchers see plain values only (the space, the budget, results): no torch, Ray or database.
What a strategy may need from the job beyond that (the study's name, where an Optuna study is
stored, a sensitivity profile read from the database) comes as a :class:`SearchContext` value,
optional: every strategy runs without one. A strategy declares what it wants filled in on its
class (:meth:`Searcher.needs`, a :class:`Needs`); the driver (``cluster/driver.py``) reads the
declaration through the registry and provides it, without knowing strategy names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mpsearch.spaces.space import Budget, Candidate, SearchSpace


@dataclass(frozen=True)
class Evaluation:
    """A told result: the candidate and its objective (None when the evaluation failed)."""

    candidate: Candidate
    objective: float | None

    @property
    def ok(self) -> bool:
        return self.objective is not None


@dataclass(frozen=True)
class SearchContext:
    """Job facts a strategy may use; each has a default that runs.

    ``study`` names the study (an Optuna searcher names its Optuna study after it). ``storage``
    is an Optuna RDB URL for a searcher used on its own; None (what the driver gives: the
    study's Optuna study is the store's mirror, ``storage/optuna_mirror.py``) keeps it in memory.
    ``profile`` maps (gene, option) to the objective delta of that single-gene perturbation of
    the all-top configuration (see ``profiling``); entries it lacks are measured. ``proxy`` maps
    (gene, option) to an error computed without scoring (the Hessian-weighted output error), for
    strategies that measure one option per gene and scale the rest (``proxy: true``).
    ``routing`` maps a routed expert's layer name to the fraction of calibration tokens routed to
    its expert (MoE models, ``routing: true``; the proxies then come weighted by it).
    """

    study: str = "mpsearch"
    storage: str | None = None
    profile: Mapping[tuple[Any, Any], float] | None = None
    proxy: Mapping[tuple[Any, Any], float] | None = None
    routing: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Needs:
    """What a strategy asks the driver to put into its :class:`SearchContext`.

    ``profile``: the sensitivity profile already stored for the model and calibration data.
    ``proxy``: the space's proxy errors (computed on a worker before the search starts), of kind
    ``proxy_kind`` (``hessian`` or ``fisher``, see ``mpsearch.workers.profile``).
    ``routing``: where the calibration tokens are routed (MoE), and proxies weighted by it.
    """

    profile: bool = False
    proxy: bool = False
    proxy_kind: str = "hessian"
    routing: bool = False


class SearcherParams(BaseModel):
    """Base of each strategy's parameters; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Searcher(ABC):
    """Base of every strategy; subclasses set ``name`` and their ``Params`` model."""

    name: ClassVar[str]
    Params: ClassVar[type[SearcherParams]] = SearcherParams
    # What the driver must provide in the context (see :meth:`needs`); nothing by default.
    NEEDS: ClassVar[Needs] = Needs()

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0,
                 params: SearcherParams | None = None,
                 context: SearchContext | None = None) -> None:
        self.space = space
        self.budget = budget
        self.seed = seed
        self.params = params if params is not None else self.Params()
        self.context = context if context is not None else SearchContext()

    @classmethod
    def needs(cls, params: SearcherParams) -> Needs:
        """What this strategy, with ``params``, wants in its context: ``NEEDS`` unless a strategy
        makes it depend on its parameters (a proxy only with ``proxy: true``)."""
        return cls.NEEDS

    @classmethod
    def objectives(cls, params: SearcherParams) -> int:
        """How many objectives the strategy with ``params`` minimizes: 1 (the objective), or 2
        (the objective and the average effective bits) for a multi-objective strategy; the
        study's Optuna mirror gets as many directions."""
        return 1

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` candidates to evaluate next (fewer, or none, is allowed)."""

    @abstractmethod
    def tell(self, results: Sequence[Evaluation]) -> None:
        """Learn from finished evaluations."""

    @property
    def finished(self) -> bool:
        """True once the searcher will propose nothing more."""
        return False

    @property
    def keeps_own_state(self) -> bool:
        """True when the strategy persists its state itself (an Optuna study in a database): a
        resumed search then tells it the stored results rather than replaying its asks."""
        return False

    def state(self) -> dict[str, Any]:
        """JSON-able state beyond the told results (optional): stored with the study for
        ``mpsearch status`` to show; resume replays the told results instead of reading it."""
        return {}

    def feasible(self, candidate: Candidate) -> bool:
        return self.space.feasible(candidate, self.budget)
