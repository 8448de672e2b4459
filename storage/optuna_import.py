"""Reading an Optuna study made elsewhere as trials of a search space (``mpsearch import-optuna``).

The study's parameters must be the space's genes by name, each a categorical whose choices are
option labels of that gene: anything else is one :class:`OptunaImportError` naming the parameter
and what the space allows, raised before anything is written. Completed trials bring their
objective (the first value of a multi-objective study), failed ones their failure; pruned,
running and waiting trials have no result and are left out. Numeric user attributes come along
as the trial's extras (``perplexity``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mpsearch.spaces.space import Candidate, SearchSpace

from .errors import mask_url
from .optuna_mirror import MirrorError, translating_optuna

IMPORT_ORIGIN = "optuna-import"  # origin of an imported trial, and the name of that history step
# User attributes a mirror writes that the store keeps in its own columns (recomputed on import).
_RECOMPUTED = frozenset({"mpsearch_trial", "avg_bits", "total_bytes"})


class OptunaImportError(MirrorError):
    """An Optuna study that cannot be read as trials of the spec's space."""


@dataclass(frozen=True)
class ImportedTrial:
    """One Optuna trial with a result, as a candidate of the space."""

    optuna_number: int
    candidate: Candidate
    objective: float | None  # None: the trial failed
    extra: dict[str, float]
    started_at: datetime | None
    finished_at: datetime | None


def _utc(value: datetime | None) -> datetime | None:
    """Optuna's naive local times as the store's naive UTC."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def _brief(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def read_optuna_study(url: str, name: str, space: SearchSpace) -> list[ImportedTrial]:
    """The trials of Optuna study ``name`` at ``url`` with a result, as candidates of ``space``.

    Raises:
        OptunaImportError: no such study, no trial with a result, or a parameter that is not a
            gene of ``space`` (or a gene without its parameter, or a choice that is not one of
            the gene's option labels).
    """
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = f"Optuna study {name!r} in {mask_url(url)}"
    with translating_optuna(url, f"read Optuna study {name!r}"):
        storage = optuna.storages.RDBStorage(url)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            known = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
            hint = f"; studies there: {_brief(known)}" if known else "; it holds no study"
            raise OptunaImportError(f"no {where}{hint}") from None
        trials = study.get_trials(deepcopy=False)
    genes = {g.name: {o.label: i for i, o in enumerate(g.options)} for g in space.genes}
    order = [g.name for g in space.genes]
    for t in trials:
        for param, dist in t.distributions.items():
            if param not in genes:
                raise OptunaImportError(
                    f"{where}: parameter {param!r} is not a layer (gene) of the spec's space; "
                    f"genes: {_brief(order)}")
            if not isinstance(dist, CategoricalDistribution):
                raise OptunaImportError(f"{where}: parameter {param!r} is a "
                                        f"{type(dist).__name__}; an option choice is categorical")
            bad = [c for c in dist.choices if c not in genes[param]]
            if bad:
                raise OptunaImportError(
                    f"{where}: parameter {param!r} has choice {bad[0]!r}, not an option of "
                    f"that layer in the spec; options: {_brief(list(genes[param]))}")
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        missing = [g for g in order if g not in t.params]
        if missing:
            raise OptunaImportError(f"{where}: trial {t.number} has no parameter {missing[0]!r} "
                                    f"(a gene of the spec's space)")
        choices = tuple(genes[g][t.params[g]] for g in order)
        objective = t.values[0] if t.state == TrialState.COMPLETE and t.values else None
        extra: dict[str, Any] = {k: float(v) for k, v in t.user_attrs.items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)
                                 and math.isfinite(v) and k not in _RECOMPUTED}
        out.append(ImportedTrial(t.number, Candidate(choices, origin=f"{IMPORT_ORIGIN}:t{t.number}"),
                                 objective, extra, _utc(t.datetime_start),
                                 _utc(t.datetime_complete)))
    if not out:
        raise OptunaImportError(f"{where} has no completed or failed trial to import")
    return out
