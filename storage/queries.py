"""Read-side queries over stored trials: one trial, the Pareto front, studies compared.

They are methods of :class:`~mpsearch.storage.store.TrialStore` (through :class:`StudyQueries`,
kept here so the store's module stays about connections, studies and writes). Every query is one
or two indexed SELECTs and never writes. The rules all of them share:

- only ``complete`` trials are results; ``running`` and ``failed`` ones are never returned;
- ties are broken by trial number (lower first), so every answer is deterministic;
- budget filters (``max_bits``, ``max_bytes``) allow :data:`FILTER_TOL`, as feasibility does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, and_, column, func, select, values
from sqlalchemy.orm import Session

from mpsearch.spaces.space import Budget

from .errors import StoreError, TrialNotFoundError, translating
from .models import COMPLETE, TrialRow
from .records import StudyKey, StudyRecord, TrialRecord, _trial, budget_clauses

_CHUNK = 1000  # values per IN list: drivers cap the bound parameters of one statement


def _chunks(values: list) -> list[list]:
    return [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]


class NoResultError(StoreError):
    """A query's filters admit no trial (the CLI says so and exits non-zero)."""


@dataclass(frozen=True)
class StudyColumn:
    """One study's side of a comparison."""

    study: StudyRecord
    completed: int  # completed trials, any cost
    within: int  # completed trials within the comparison's budget
    best: tuple[TrialRecord, ...]  # lowest objective first, at most ``top``


@dataclass(frozen=True)
class Comparison:
    """Studies side by side under one budget.

    ``notes`` says what makes their objectives not directly comparable (another model, objective
    or calibration set); a comparison is still made, the reader decides.
    """

    budget: Budget
    columns: tuple[StudyColumn, ...]
    notes: tuple[str, ...]


def pareto_front(levels: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points among ``(avg_bits, objective)``, both minimized.

    ``levels`` must be sorted ascending (by bits, then objective). A sorted scan keeps a point
    exactly when its objective is strictly below that of every point before it, so of equal
    points only the first is kept. O(n).
    """
    front: list[tuple[float, float]] = []
    best = float("inf")
    for bits, objective in levels:
        if objective < best:
            front.append((bits, objective))
            best = objective
    return front


def study_budget(study: StudyRecord) -> Budget:
    """The budget a study was created with (no bound for a study stored without one)."""
    return study.budget


def _calibration(study: StudyRecord) -> dict[str, Any] | None:
    return None if study.calibration is None else study.calibration.section()


def _differences(studies: Sequence[StudyRecord]) -> tuple[str, ...]:
    first = studies[0]
    notes = []
    for label, value in (("model", lambda s: s.model), ("objective", lambda s: s.objective),
                         ("calibration", _calibration)):
        other = [s.name for s in studies[1:] if value(s) != value(first)]
        if other:
            notes.append(f"{', '.join(other)} differ from {first.name} in {label}: "
                         "objective values are not directly comparable")
    return tuple(notes)


class StudyQueries:
    """The read-side queries of :class:`~mpsearch.storage.store.TrialStore` (which provides the
    connection and the study lookup declared here)."""

    url: str

    def _session(self) -> Session:
        raise NotImplementedError

    def _study_id(self, s: Session, study: StudyKey) -> int:
        raise NotImplementedError

    def study(self, study: StudyKey) -> StudyRecord:
        raise NotImplementedError

    def best(self, study: StudyKey, top: int = 5, max_bits: float | None = None,
             max_bytes: float | None = None, origin: str | None = None) -> list[TrialRecord]:
        raise NotImplementedError

    def frontier(self, study: StudyKey) -> list[tuple[Budget, TrialRecord | None]]:
        """The best trial at each budget the study searched (``StudyRecord.budgets``, tightest
        first; one for a study of one budget), as ``best`` ranks them; None where none fits."""
        record = self.study(study)
        return [(b, next(iter(self.best(record.id, 1, b.avg_bits, b.total_bytes)), None))
                for b in record.budgets]

    def trial(self, study: StudyKey, number: int) -> TrialRecord:
        """Trial ``number`` of ``study``, whatever its status; :class:`TrialNotFoundError` if none."""
        with translating(self.url, "read trial"), self._session() as s:
            study_id = self._study_id(s, study)
            row = s.scalar(select(TrialRow).where(TrialRow.study_id == study_id,
                                                  TrialRow.number == number))
            if row is None:
                last = s.scalar(select(func.max(TrialRow.number))
                                .where(TrialRow.study_id == study_id))
                span = "it has no trials" if last is None else f"its trials are 0..{last}"
                raise TrialNotFoundError(f"study {study!r} has no trial {number}; {span}")
            return _trial(row)

    def pareto(self, study: StudyKey, max_bits: float | None = None, max_bytes: float | None = None,
               feasible_only: bool = False) -> list[TrialRecord]:
        """Completed trials scored on every calibration sample not dominated in (objective,
        avg_bits), cheapest first (a figure screened on fewer samples is not comparable).

        A trial is dominated when another has at most its bits and at most its objective, one of
        them strictly less. Over-budget trials belong to the front unless ``feasible_only``; their
        ``feasible`` flag tells them apart. Of trials with equal bits and objective, the lowest
        numbered is returned.
        """
        with translating(self.url, "query the Pareto front"), self._session() as s:
            study_id = self._study_id(s, study)
            where = [TrialRow.study_id == study_id, TrialRow.status == COMPLETE,
                     TrialRow.samples.is_(None), *budget_clauses(max_bits, max_bytes)]
            if feasible_only:
                where.append(TrialRow.feasible.is_(True))
            # Only each cost level's lowest objective can be on the front: the database groups
            # over the covering index ix_mps_trial_pareto, Python scans the (few) levels.
            levels = s.execute(select(TrialRow.avg_bits, func.min(TrialRow.objective))
                               .where(*where).group_by(TrialRow.avg_bits)
                               .order_by(TrialRow.avg_bits))
            front = dict(pareto_front((bits, obj) for bits, obj in levels if obj is not None))
            # The lowest-numbered trial of each front point: the points join the index as a
            # VALUES list (an IN list of pairs takes PostgreSQL long to plan, and two IN lists
            # make SQLite probe their cross product).
            chosen: dict[float, int] = {}
            for chunk in _chunks(list(front.items())):
                points = values(column("bits", Float), column("obj", Float),
                                name="front").data(chunk).cte("front")
                for bits, number in s.execute(
                        select(TrialRow.avg_bits, TrialRow.number).where(*where).join(
                            points, and_(TrialRow.avg_bits == points.c.bits,
                                         TrialRow.objective == points.c.obj))):
                    if number < chosen.get(bits, number + 1):
                        chosen[bits] = number
            rows: dict[int, TrialRecord] = {}
            for chunk in _chunks(list(chosen.values())):
                rows.update((r.number, _trial(r)) for r in s.scalars(
                    select(TrialRow).where(TrialRow.study_id == study_id,
                                           TrialRow.number.in_(chunk))))
            return [rows[chosen[bits]] for bits in front]

    def compare(self, studies: Sequence[StudyKey], max_bits: float | None = None,
                max_bytes: float | None = None, top: int = 1) -> Comparison:
        """The best ``top`` trials of each study under one budget, side by side.

        The budget is ``max_bits``/``max_bytes`` when either is given, else the first study's.
        Every study's completed trials are judged against that one budget, not against their own
        study's (so studies run at different budgets can be compared at a common one).
        """
        if len(studies) < 2:
            raise StoreError(f"compare needs at least two studies, got {len(studies)}")
        records = [self.study(name) for name in studies]
        given = max_bits is not None or max_bytes is not None
        budget = Budget(max_bits, max_bytes) if given else study_budget(records[0])
        columns = []
        with translating(self.url, "compare studies"), self._session() as s:
            for record in records:
                done = [TrialRow.study_id == record.id, TrialRow.status == COMPLETE]
                within = [*done, *budget_clauses(budget.avg_bits, budget.total_bytes)]
                n_done = s.scalar(select(func.count()).select_from(TrialRow).where(*done)) or 0
                n_within = s.scalar(select(func.count()).select_from(TrialRow).where(*within)) or 0
                rows = s.scalars(select(TrialRow).where(*within)
                                 .order_by(TrialRow.objective, TrialRow.number).limit(top))
                columns.append(StudyColumn(record, n_done, n_within, tuple(map(_trial, rows))))
        return Comparison(budget, tuple(columns), _differences(records))
