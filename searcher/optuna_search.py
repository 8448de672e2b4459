"""Bayesian and multi-objective search through Optuna's ask/tell interface.

One Optuna trial per configuration, one categorical parameter per gene (named after the gene,
valued by option label, so Optuna's dashboard reads it). Samplers: TPE (multivariate, grouped;
Watanabe 2023), the Gaussian-process sampler, and NSGA-II for the multi-objective form
(objective and average effective bits, both minimized). The study is named after the mpsearch
study and lives where ``context.storage`` says (an RDB URL; a new searcher on a stored study
continues it), or in memory. The driver keeps it in memory: the study users open in Optuna's
tools is the store's mirror (``storage/optuna_mirror.py``, every trial of every strategy, with
every option as a choice), and a resumed driver rebuilds this searcher by replaying the stored
trials like any other strategy's.

Each gene's choices are its options within ``window`` cost tiers of the budget (tiers: distinct
bits per weight; :func:`.levels.budget_window`). Over the whole space a draw changes many genes
at once in random directions, nearly always breaks the budget, and its repair lowers random
genes: neither TPE nor random search then beats the uniform configuration at the budget
(docs/benchmarks.md). Around the budget, TPE's draws are small, balanced moves it can learn from.
``window: null`` searches every option.

Within a tier, only the ``formats`` options whose uniform baselines scored best are kept (the
baselines run first and are told before the first ask). In a space with several formats of one
width (RTN and GPTQ, nf4 and mxfp4 at 4.25 bits), a categorical draw otherwise swaps a fifth of
the genes to a format that is worse for nearly every layer, and neither TPE nor GP gets past the
best uniform configuration (docs/benchmarks.md). A tier with no told baseline keeps every option.
The choices are fixed at the first ask: a study keeps the ones it was created with.

The budget is reported through ``trial.set_constraint("budget", v)`` (Optuna 5; ``v <= 0`` is
feasible, ``v`` the relative excess), read by TPE, GP and NSGA-II. Optuna's constraints are soft,
so a draw over budget never reaches a worker: it is told as pruned (with its constraint, so the
sampler learns the region is infeasible), and its repair (random genes lowered a level until it
fits) is enqueued as the next trial, which is the one evaluated. A draw already evaluated is told
its known value at once. Optuna is imported inside this module's functions only.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Candidate

from .base import Evaluation, Searcher, SearcherParams
from .levels import LevelMap, budget_window, repair_down

_DRAWS_PER_SLOT = 20  # Optuna draws per proposal before giving up (pruned repeats and repairs)


class OptunaParams(SearcherParams):
    sampler: Literal["tpe", "gp", "nsga2"] = "tpe"
    # Random trials before TPE or GP model the results (Optuna's default is 10).
    startup_trials: int = Field(default=10, ge=1)
    # NSGA-II's population per generation.
    population: int = Field(default=20, ge=2)
    # Cost tiers either side of the budget's that each gene may take (None: every option).
    window: int | None = Field(default=1, ge=0)
    # Options kept per tier: those of the best uniform baselines (None: every option).
    formats: int | None = Field(default=1, ge=1)


class OptunaSearcher(Searcher):
    name = "optuna"
    Params = OptunaParams

    @classmethod
    def objectives(cls, params: SearcherParams) -> int:
        assert isinstance(params, OptunaParams)
        return 2 if params.sampler == "nsga2" else 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.params, OptunaParams)
        self.p: OptunaParams = self.params
        self.rng = random.Random(self.seed)
        self.space.check_budget(self.budget)
        self.multi = self.objectives(self.p) == 2
        self.names = [g.name for g in self.space.genes]
        self.study = self._open_study()
        # The choices: fixed at the first ask (after the baselines), or the stored study's.
        self.dists: dict[str, Any] | None = None
        self.allowed: list[set[int]] | None = None
        self.levels = LevelMap(self.space)
        self.uniform_scores: dict[str, float] = {}  # option label → its uniform baseline's score
        self.early: list[Evaluation] = []  # told before the choices were fixed
        self.pending: dict[tuple[int, ...], int] = {}  # asked choices → trial number
        self.known: dict[tuple[int, ...], float] = {}  # evaluated choices → objective
        self._load_known()

    # -- the study ---------------------------------------------------------------------------
    def _sampler(self):
        import optuna

        if self.p.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, multivariate=True, group=True,
                                              n_startup_trials=self.p.startup_trials,
                                              constant_liar=True)
        if self.p.sampler == "gp":
            return optuna.samplers.GPSampler(seed=self.seed,
                                             n_startup_trials=self.p.startup_trials)
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.p.population)

    def _open_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        directions = ["minimize", "minimize"] if self.multi else ["minimize"]
        try:
            study = optuna.create_study(storage=self.context.storage, sampler=self._sampler(),
                                        study_name=self.context.study, directions=directions,
                                        load_if_exists=True)
        except ValueError as exc:  # e.g. an existing study with other directions
            raise SpecError(f"searcher: Optuna study {self.context.study!r}: {exc}") from None
        if len(study.directions) != len(directions):
            raise SpecError(f"searcher: Optuna study {self.context.study!r} has "
                            f"{len(study.directions)} objective(s); sampler {self.p.sampler!r} "
                            f"needs {len(directions)}: use another study name")
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)  # asked by a driver that stopped
        return study

    def _load_known(self) -> None:
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            choices = self._choices(t.params)
            if choices is not None:
                self.known[choices] = t.values[0]

    def _fix_choices(self) -> None:
        """The study's choices: a stored study's (Optuna refuses a parameter whose choices
        change), else the window around the budget less the formats of worse baselines."""
        from optuna.distributions import CategoricalDistribution

        stored = self._stored_distributions()
        if stored:
            self.dists, self.allowed = stored
        else:
            window = None if self.p.window is None else \
                budget_window(self.space, self.budget, self.p.window)
            self.allowed = self._best_formats(window)
        self.levels = LevelMap(self.space, self.allowed)
        if not stored:
            self.dists = {name: CategoricalDistribution([g.options[o].label for o in order])
                          for name, g, order in zip(self.names, self.space.genes,
                                                    self.levels.order, strict=True)}
        early, self.early = self.early, []
        self.tell(early)

    def _best_formats(self, window: list[set[int]] | None) -> list[set[int]] | None:
        """Per gene and tier of ``window``, the ``formats`` options of the best uniform scores."""
        if self.p.formats is None or not self.uniform_scores:
            return window
        out = []
        for g, tiers in enumerate(LevelMap(self.space, window).tiers):
            options = self.space.genes[g].options
            keep: set[int] = set()
            for tier in tiers:
                scored = sorted((self.uniform_scores[options[o].label], o) for o in tier
                                if options[o].label in self.uniform_scores)
                keep.update([o for _, o in scored[: self.p.formats]] if scored else tier)
            out.append(keep)
        return out

    def _stored_distributions(self) -> tuple[dict[str, Any], list[set[int]]] | None:
        """The distributions of the study's trials of this space, and the options they allow."""
        labels = [{o.label: i for i, o in enumerate(g.options)} for g in self.space.genes]
        for t in self.study.get_trials(deepcopy=False):
            dists = t.distributions
            if set(dists) != set(self.names):
                continue
            if all(c in lab for name, lab in zip(self.names, labels, strict=True)
                   for c in dists[name].choices):
                return ({name: dists[name] for name in self.names},
                        [{lab[c] for c in dists[name].choices}
                         for name, lab in zip(self.names, labels, strict=True)])
        return None

    def _inside(self, choices: tuple[int, ...]) -> bool:
        """Whether the study can hold ``choices`` (every gene inside its window)."""
        return self.allowed is None or all(c in a for c, a in zip(choices, self.allowed, strict=True))

    def _choices(self, params: dict[str, Any]) -> tuple[int, ...] | None:
        try:
            return tuple(next(i for i, o in enumerate(g.options) if o.label == params[name])
                         for name, g in zip(self.names, self.space.genes, strict=True))
        except (KeyError, StopIteration):
            return None  # a trial of another space (the study name was reused)

    def _params(self, choices: Sequence[int]) -> dict[str, str]:
        return {name: g.options[c].label
                for name, g, c in zip(self.names, self.space.genes, choices, strict=True)}

    def _constraint(self, choices: tuple[int, ...]) -> float:
        """The largest relative excess over the budget's rows (<= 0: feasible)."""
        excess = [row.value(choices) / row.limit - 1 for row in self.space.constraints(self.budget)
                  if row.limit > 0]
        return max(excess, default=0.0) if not self.feasible(Candidate(choices)) else \
            min(max(excess, default=0.0), 0.0)

    def _values(self, choices: tuple[int, ...], objective: float) -> list[float]:
        if self.multi:
            return [objective, self.space.cost(Candidate(choices)).avg_bits]
        return [objective]

    # -- ask/tell ----------------------------------------------------------------------------
    def _draw(self) -> Candidate | None:
        from optuna.trial import TrialState

        if self.dists is None:
            self._fix_choices()
        dists = self.dists
        for _ in range(_DRAWS_PER_SLOT):
            trial = self.study.ask(dists)
            choices = self._choices(trial.params)
            assert choices is not None
            trial.set_constraint("budget", self._constraint(choices))
            if not self.feasible(Candidate(choices)):
                fixed = list(choices)
                self.study.tell(trial, state=TrialState.PRUNED)
                if repair_down(fixed, self.levels, self.budget, self.rng):
                    self.study.enqueue_trial(self._params(fixed), skip_if_exists=False)
                continue
            if choices in self.known:
                self.study.tell(trial, self._values(choices, self.known[choices]))
                continue
            if choices in self.pending:
                self.study.tell(trial, state=TrialState.PRUNED)
                continue
            self.pending[choices] = trial.number
            return Candidate(choices, origin=f"{self.name}:{self.p.sampler}:t{trial.number}")
        return None

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n):
            c = self._draw()
            if c is None:
                break
            out.append(c)
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        import optuna
        from optuna.trial import TrialState

        for r in results:
            c = r.candidate
            if c.samples is not None:
                continue  # Optuna compares full-fidelity objectives only
            if self.dists is None:
                labels = {g.options[o].label for g, o in zip(self.space.genes, c.choices, strict=True)
                          if g.layers}  # a uniform baseline's weights (its KV cache aside)
                if r.ok and len(labels) == 1:
                    assert r.objective is not None
                    self.uniform_scores[labels.pop()] = r.objective
                self.early.append(r)
                continue
            number = self.pending.pop(c.choices, None)
            if number is not None:
                if r.ok:
                    assert r.objective is not None
                    self.study.tell(number, self._values(c.choices, r.objective))
                    self.known[c.choices] = r.objective
                else:
                    self.study.tell(number, state=TrialState.FAIL)
            elif r.ok and c.choices not in self.known and self._inside(c.choices):
                assert r.objective is not None  # a result Optuna did not ask for: learn it
                self.known[c.choices] = r.objective
                self.study.add_trial(optuna.trial.create_trial(
                    params=self._params(c.choices), distributions=self.dists,
                    values=self._values(c.choices, r.objective),
                    constraints={"budget": self._constraint(c.choices)}))

    def state(self) -> dict[str, Any]:
        return {"study": self.context.study, "trials": len(self.study.trials)}

    @property
    def keeps_own_state(self) -> bool:
        return self.context.storage is not None  # the Optuna study in its RDB is the state
