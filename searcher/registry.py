"""Strategy names → classes, and building a strategy from the spec's name and parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mpsearch.spaces.errors import SpecError, validation_message
from mpsearch.spaces.space import Budget, SearchSpace

from .base import Needs, SearchContext, Searcher
from .evolutionary import EvolutionarySearcher
from .hybrid import HybridSearcher
from .ip_searcher import IntegerProgramSearcher
from .optuna_search import OptunaSearcher
from .population import PopulationEvolutionarySearcher
from .random_search import RandomSearcher
from .uniform import UniformSearcher

SEARCHERS: dict[str, type[Searcher]] = {
    cls.name: cls for cls in (EvolutionarySearcher, PopulationEvolutionarySearcher,
                              HybridSearcher, IntegerProgramSearcher, OptunaSearcher,
                              RandomSearcher, UniformSearcher)
}


class SearcherConfig(BaseModel):
    """The spec's ``searcher`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "evolutionary"
    params: dict[str, Any] = Field(default_factory=dict)
    # Evaluate the uniform baselines of the space first (they count as evaluations).
    baselines: bool = True
    # After the search, re-score the best `confirm` configurations on every calibration sample
    # (those scored on fewer are evaluated again, on top of `evaluations`); `best` ranks by that
    # confirmed figure (cluster/confirm.py). 0: no confirmation.
    confirm: int = Field(default=0, ge=0, le=1000)
    # auto: multi-step selection where it pays (:func:`with_fidelity`); full: every candidate
    # on every calibration sample, as studies stored before this field.
    fidelity: Literal["auto", "full"] = "auto"

    def check(self) -> None:
        """Validate the name and parameters without building anything."""
        cls = searcher_class(self.name)
        try:
            cls.Params(**self.params)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            valid = ", ".join(cls.Params.model_fields) or "(none)"
            msg = validation_message(err, cls.Params)
            raise SpecError(f"searcher.params.{field}: {msg} (parameters of "
                            f"{self.name!r}: {valid})") from None


# Calibration samples from which ``fidelity: auto`` screens, by the workers' device
# (bench/fidelity_pays.py, docs/benchmarks.md): the strategies with multi-step selection screen
# λ offspring on an eighth of the samples and score the best quarter on all of them, unless the
# spec gives its own ``selection``. On a CPU an evaluation's cost grows with its samples, and
# screening won from 64 on. On a GPU (one H200, MiniLM) an evaluation of 64 samples costs what one
# of 128 does (fixed costs: kernel launches, applying the weights), so a screen on 8 saves little:
# screening lost at 64 samples and won from 128 on.
SCREEN_FROM = {"cpu": 64, "cuda": 128}


def with_fidelity(config: SearcherConfig, samples: int | None,
                  device: str = "cpu") -> SearcherConfig:
    """``config`` with the multi-step selection ``fidelity: auto`` gives it on ``samples``
    calibration samples: ``[[λ, samples // 8], [max(λ // 4, 1), null]]`` for a strategy that
    has a ``selection`` parameter and was not given one, from ``SCREEN_FROM[device]`` samples
    on (``device``: the workers', as ``JobSpec.worker_device`` names it); otherwise ``config``
    as it is."""
    cls = searcher_class(config.name)
    if (config.fidelity != "auto" or samples is None or samples < SCREEN_FROM[device]
            or "selection" not in cls.Params.model_fields or "selection" in config.params):
        return config
    offspring = int(cls.Params(**config.params).model_dump()["offspring"])  # with selection: λ
    stages = [[offspring, samples // 8], [max(offspring // 4, 1), None]]
    return config.model_copy(update={"params": {**config.params, "selection": stages}})


def searcher_class(name: str) -> type[Searcher]:
    try:
        return SEARCHERS[name]
    except KeyError:
        raise SpecError(f"searcher.name: unknown strategy {name!r}; valid: "
                        f"{', '.join(sorted(SEARCHERS))}") from None


def searcher_needs(config: SearcherConfig) -> Needs:
    """What the configured strategy declares it needs from the driver (its class's ``needs``);
    the uniform baselines before it need nothing."""
    cls = searcher_class(config.name)
    return cls.needs(cls.Params(**config.params))


def make_searcher(config: SearcherConfig, space: SearchSpace, budget: Budget,
                  seed: int, context: SearchContext | None = None,
                  frontier: Sequence[Budget] = ()) -> Searcher:
    """The configured strategy, preceded by the uniform baselines when asked for.

    ``context`` carries the study's name, the Optuna storage URL and a given profile (see
    :class:`SearchContext`); without it every strategy still runs (Optuna in memory, profiles
    measured). ``frontier`` (more than one budget, tightest first; ``budget`` is then the
    loosest) runs the strategy once per budget behind a
    :class:`~mpsearch.searcher.frontier.FrontierSearcher`, sharing every evaluation.
    """
    from .frontier import FrontierSearcher
    from .sequential import SequentialSearcher

    config.check()
    cls = searcher_class(config.name)
    params = cls.Params(**config.params)
    main: Searcher = cls(space, budget, seed, params, context)
    if len(frontier) > 1 and config.name != UniformSearcher.name:
        main = FrontierSearcher([cls(space, point, seed, params, context) for point in frontier])
    if not config.baselines or config.name == UniformSearcher.name:
        return main
    return SequentialSearcher([UniformSearcher(space, budget, seed), main])
