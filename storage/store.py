"""The store API: create or reopen studies, record trials as they run, query the best ones.

Any SQLAlchemy URL works; a bare path or the default is a SQLite file. SQLite is opened in WAL
mode, so ``mpsearch best`` in a second shell reads committed trials while a search writes. Every
trial is committed on its own, so a crash loses at most the evaluations in flight.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from mpsearch.spaces.space import Candidate, SearchSpace

from .config import DEFAULT_URL
from .errors import (
    StoreError,
    StudyConflictError,
    StudyNotFoundError,
    loading_driver,
    mask_url,
    translating,
)
from .models import COMPLETE, FAILED, RUNNING, Base, StudyRow, TrialRow

BASELINE_ORIGIN = "uniform"  # the origin the uniform-baseline strategy gives its trials
_NUMBER_RETRIES = 20  # concurrent start_trial calls on one study: attempts before giving up
# Budget filters admit a trial this far over the bound: avg_bits is a float quotient, and the
# feasibility flag written with each trial allows the same slack (``Budget.admits``).
FILTER_TOL = 1e-9


@dataclass(frozen=True)
class StudyRecord:
    id: int
    name: str
    spec: dict[str, Any]
    spec_hash: str
    space: SearchSpace
    model: str
    objective: str
    evaluations: int
    status: str
    created_at: datetime


@dataclass(frozen=True)
class TrialRecord:
    number: int
    status: str
    origin: str
    choices: tuple[int, ...]
    samples: int | None
    objective: float | None
    avg_bits: float
    total_bytes: float
    feasible: bool
    seed: int
    worker: str | None
    error: str | None
    eval_seconds: float | None
    started_at: datetime
    finished_at: datetime | None
    # Resume bookkeeping (see the columns of TrialRow).
    told_after: int | None = None
    interrupted: bool = False
    retry_of: int | None = None
    extra: dict[str, float] | None = None

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.choices, self.samples, self.origin)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL; a bare file path becomes a SQLite URL."""
    return url if "://" in url else f"sqlite:///{url}"


def _study(row: StudyRow) -> StudyRecord:
    return StudyRecord(row.id, row.name, row.spec, row.spec_hash, SearchSpace.from_dict(row.space),
                       row.model, row.objective, row.evaluations, row.status, row.created_at)


def _trial(row: TrialRow) -> TrialRecord:
    return TrialRecord(row.number, row.status, row.origin, tuple(row.choices), row.samples,
                       row.objective, row.avg_bits, row.total_bytes, row.feasible, row.seed,
                       row.worker, row.error, row.eval_seconds, row.started_at, row.finished_at,
                       row.told_after, bool(row.interrupted), row.retry_of, row.extra)


def _add_missing_columns(conn: Connection) -> None:
    """Add nullable columns that newer models declare to tables an older version created."""
    have = inspect(conn)
    for table in Base.metadata.sorted_tables:
        if not have.has_table(table.name):
            continue
        present = {c["name"] for c in have.get_columns(table.name)}
        for col in table.columns:
            if col.name not in present and col.nullable:
                kind = col.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {col.name} {kind}'))


def budget_clauses(max_bits: float | None = None, max_bytes: float | None = None,
                   origin: str | None = None) -> list[ColumnElement[bool]]:
    """WHERE clauses for the optional filters every query shares (bounds allow ``FILTER_TOL``)."""
    clauses: list[ColumnElement[bool]] = []
    if max_bits is not None:
        clauses.append(TrialRow.avg_bits <= max_bits + FILTER_TOL)
    if max_bytes is not None:
        clauses.append(TrialRow.total_bytes <= max_bytes + FILTER_TOL)
    if origin is not None:
        clauses.append(TrialRow.origin == origin)
    return clauses


class TrialStore:
    """Studies and trials in one SQL database."""

    def __init__(self, url: str = DEFAULT_URL, create: bool = True) -> None:
        self.url = normalize_url(url)
        with translating(self.url, "connect"):
            parsed = make_url(self.url)
            database = parsed.database or ""
            if (not create and parsed.get_backend_name() == "sqlite" and database
                    and database != ":memory:" and not Path(database).exists()):
                raise StoreError(f"no mpsearch store at {mask_url(self.url)}: the file does not "
                                 "exist (pass --db, or run a search first)")
            with loading_driver(self.url):
                self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            with self.engine.connect() as conn:
                if create:
                    self._create_schema()
                elif not inspect(conn).has_table(StudyRow.__tablename__):
                    raise StoreError(f"no mpsearch store at {mask_url(self.url)}: it has no "
                                     f"{StudyRow.__tablename__} table (pass --db, or run a search)")
                else:  # a store written by an older version: add its missing nullable columns
                    _add_missing_columns(conn)
                    conn.commit()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _create_schema(self) -> None:
        """Create missing tables and columns; a second process doing the same at once may win
        the race to CREATE TABLE, so one failure is retried (the tables then exist)."""
        for attempt in range(2):
            try:
                Base.metadata.create_all(self.engine)
                with self.engine.begin() as conn:
                    _add_missing_columns(conn)
                return
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt:
                    raise

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # -- studies -----------------------------------------------------------------------------
    def open_study(self, name: str, spec: dict[str, Any], identity: dict[str, Any],
                   space: SearchSpace, model: str, objective: str,
                   evaluations: int) -> tuple[StudyRecord, bool]:
        """The study ``name``, created if new; returns (study, created).

        ``identity`` is the part of the spec that defines what the study searches; an existing
        study must have the same, otherwise :class:`StudyConflictError`. A rerun may raise the
        evaluation budget.
        """
        digest = spec_hash(identity)
        with translating(self.url, f"open study {name!r}"), self._session() as s, s.begin():
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is not None:
                if row.spec_hash != digest:
                    raise StudyConflictError(
                        f"study {name!r} already exists in {self.masked_url} with a different "
                        "spec; choose another study name or rerun with the original spec")
                if evaluations > row.evaluations:
                    row.evaluations, row.status = evaluations, RUNNING
                return _study(row), False
            now = _now()
            row = StudyRow(name=name, spec=spec, spec_hash=digest, space=space.to_dict(),
                           model=model, objective=objective, evaluations=evaluations,
                           status=RUNNING, created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            return _study(row), True

    def study(self, name: str) -> StudyRecord:
        with translating(self.url, f"read study {name!r}"), self._session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                known = s.scalars(select(StudyRow.name).order_by(StudyRow.name).limit(10)).all()
                hint = f"; studies here: {', '.join(known)}" if known else "; the database is empty"
                raise StudyNotFoundError(f"no study {name!r} in {self.masked_url}{hint}")
            return _study(row)

    def studies(self) -> list[StudyRecord]:
        with translating(self.url, "list studies"), self._session() as s:
            return [_study(r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id))]

    def set_study_status(self, study_id: int, status: str) -> None:
        with translating(self.url, "update study"), self._session() as s, s.begin():
            row = s.get(StudyRow, study_id)
            assert row is not None
            row.status, row.updated_at = status, _now()

    # -- trials ------------------------------------------------------------------------------
    def start_trial(self, study_id: int, candidate: Candidate, avg_bits: float,
                    total_bytes: float, feasible: bool, seed: int) -> int:
        """Record a dispatched trial; returns its number within the study.

        The number is max(number) + 1; two writers racing for the same number meet the unique
        (study, number) constraint, and the loser retries with the next one. (The search driver
        does not come here per trial: it holds the study's lease and numbers trials in memory,
        see :class:`mpsearch.storage.writer.TrialWriter`.)
        """
        number = -1
        for attempt in range(_NUMBER_RETRIES):
            try:
                with translating(self.url, "record trial"), self._session() as s, s.begin():
                    last = s.scalar(select(func.max(TrialRow.number))
                                    .where(TrialRow.study_id == study_id))
                    number = 0 if last is None else last + 1
                    s.add(TrialRow(study_id=study_id, number=number, status=RUNNING,
                                   origin=candidate.origin, choices=list(candidate.choices),
                                   samples=candidate.samples, objective=None, avg_bits=avg_bits,
                                   total_bytes=total_bytes, feasible=feasible, seed=seed,
                                   started_at=_now()))
                return number
            except StoreError:
                if attempt == _NUMBER_RETRIES - 1 or not self._number_taken(study_id, number):
                    raise
        raise AssertionError("unreachable")

    def _number_taken(self, study_id: int, number: int) -> bool:
        with translating(self.url, "record trial"), self._session() as s:
            return s.scalar(select(func.count()).where(TrialRow.study_id == study_id,
                                                       TrialRow.number == number)) == 1

    def finish_trial(self, study_id: int, number: int, objective: float | None,
                     worker: str | None, error: str | None, eval_seconds: float | None) -> None:
        with translating(self.url, "record trial result"), self._session() as s, s.begin():
            row = s.scalar(select(TrialRow).where(TrialRow.study_id == study_id,
                                                  TrialRow.number == number))
            if row is None:
                raise StoreError(f"trial {number} of study {study_id} vanished")
            row.status = COMPLETE if objective is not None else FAILED
            row.objective, row.worker, row.error = objective, worker, error
            row.eval_seconds, row.finished_at = eval_seconds, _now()

    def trials(self, study: str, status: str | None = None) -> list[TrialRecord]:
        study_id = self.study(study).id
        with translating(self.url, "read trials"), self._session() as s:
            q = select(TrialRow).where(TrialRow.study_id == study_id)
            if status is not None:
                q = q.where(TrialRow.status == status)
            return [_trial(r) for r in s.scalars(q.order_by(TrialRow.number))]

    def counts(self, study: str) -> dict[str, int]:
        study_id = self.study(study).id
        with translating(self.url, "count trials"), self._session() as s:
            rows = s.execute(select(TrialRow.status, func.count()).where(
                TrialRow.study_id == study_id).group_by(TrialRow.status)).all()
            return {status: n for status, n in rows}

    def best(self, study: str, top: int = 5, max_bits: float | None = None,
             max_bytes: float | None = None, origin: str | None = None) -> list[TrialRecord]:
        """The ``top`` completed, budget-feasible trials of lowest objective.

        Ties are broken by trial number, so the answer is deterministic. Optional filters tighten
        the budget further (``max_bits``, ``max_bytes``) or keep one strategy's trials.
        """
        study_id = self.study(study).id
        with translating(self.url, "query best trials"), self._session() as s:
            q = select(TrialRow).where(TrialRow.study_id == study_id,
                                       TrialRow.status == COMPLETE, TrialRow.feasible.is_(True))
            q = q.where(*budget_clauses(max_bits, max_bytes, origin))
            q = q.order_by(TrialRow.objective, TrialRow.number).limit(top)
            return [_trial(r) for r in s.scalars(q)]

    def baselines(self, study: str) -> list[TrialRecord]:
        """Completed uniform-baseline trials, cheapest first (a handful of rows, read by SQL)."""
        study_id = self.study(study).id
        with translating(self.url, "read baselines"), self._session() as s:
            q = (select(TrialRow)
                 .where(TrialRow.study_id == study_id, TrialRow.status == COMPLETE,
                        TrialRow.origin == BASELINE_ORIGIN)
                 .order_by(TrialRow.avg_bits, TrialRow.number))
            return [_trial(r) for r in s.scalars(q)]

    def mark_running_failed(self, study_id: int, reason: str) -> int:
        """Mark trials left ``running`` (by a driver that died) as failed; returns how many."""
        with translating(self.url, "recover trials"), self._session() as s, s.begin():
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == study_id,
                                                    TrialRow.status == RUNNING)).all()
            for row in rows:
                row.status, row.error, row.finished_at = FAILED, reason, _now()
                row.interrupted = True
            return len(rows)

    def set_evaluations(self, study_id: int, evaluations: int) -> None:
        """Set the evaluation budget of a study (``resume --extend``); it runs again."""
        with translating(self.url, "update study"), self._session() as s, s.begin():
            row = s.get(StudyRow, study_id)
            assert row is not None
            row.evaluations, row.status, row.updated_at = evaluations, RUNNING, _now()

