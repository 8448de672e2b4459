"""The store API: one class, :class:`TrialStore`, for studies, their trials and every query.

Any SQLAlchemy URL works; a bare path or the default is a SQLite file. SQLite is opened in WAL
mode, so ``mpsearch best`` in a second shell reads committed trials while a search writes.

A study is opened (or created) by name once; every later call may name it by its id (the
record's ``id``), which costs no lookup. Trials are written through one path, the buffered
:class:`~mpsearch.storage.writer.TrialWriter` (:meth:`TrialStore.writer`): the search driver
keeps one for its run; :meth:`TrialStore.start_trial`/:meth:`finish_trial` write one trial through
a writer of their own, for callers that record trials one at a time. The read-side queries
(``trial``, ``pareto``, ``compare``) live in :mod:`.queries` and are methods of the same class.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from mpsearch.spaces.space import Budget, Candidate, SearchSpace

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
from .queries import StudyQueries
from .records import (
    BASELINE_ORIGIN,
    FILTER_TOL,
    CalibrationRecord,
    StudyKey,
    StudyRecord,
    TrialRecord,
    _now,
    _study,
    _trial,
    budget_clauses,
    legacy_columns,
    spec_hash,
    typed_columns,
)
from .writer import TrialWriter

__all__ = ["BASELINE_ORIGIN", "DEFAULT_URL", "FILTER_TOL", "CalibrationRecord", "StudyKey",
           "StudyRecord", "TrialRecord", "TrialStore", "budget_clauses", "normalize_url",
           "spec_hash"]

_NUMBER_RETRIES = 20  # concurrent start_trial calls on one study: attempts before giving up


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL; a bare file path becomes a SQLite URL."""
    return url if "://" in url else f"sqlite:///{url}"


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


def _upgrade(conn: Connection) -> None:
    """Bring a store an older version wrote up to date: its missing tables (e.g. the strategy
    history) and columns, and the typed study columns of studies stored before them (filled from
    their stored spec, once)."""
    Base.metadata.create_all(conn)  # only the tables it lacks
    _add_missing_columns(conn)
    old = conn.execute(select(StudyRow.id, StudyRow.spec).where(StudyRow.model_kind.is_(None)))
    for study_id, spec in old.all():
        conn.execute(update(StudyRow).where(StudyRow.id == study_id)
                     .values(**legacy_columns(spec or {})))


class TrialStore(StudyQueries):
    """Studies and trials in one SQL database: the one store API (see the module docstring)."""

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
                    _upgrade(conn)
                    conn.commit()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _create_schema(self) -> None:
        """Create missing tables and columns; a second process doing the same at once may win
        the race to CREATE TABLE, so one failure is retried (the tables then exist)."""
        for attempt in range(2):
            try:
                Base.metadata.create_all(self.engine)
                with self.engine.begin() as conn:
                    _upgrade(conn)
                return
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt:
                    raise

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after a bulk load; PostgreSQL and SQLite)."""
        with translating(self.url, "analyze"), self.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    def _session(self) -> Session:
        return self._sessions()

    # -- studies -----------------------------------------------------------------------------
    def open_study(self, name: str, spec: dict[str, Any], identity: dict[str, Any],
                   space: SearchSpace, model: str, objective: str, evaluations: int, *,
                   budget: Budget | None = None, kind: str = "auto", dtype: str = "float32",
                   calibration: CalibrationRecord | None = None,
                   frontier: tuple[Budget, ...] = ()) -> tuple[StudyRecord, bool]:
        """The study ``name``, created if new; returns (study, created).

        ``identity`` is the part of the spec that defines what the study searches; an existing
        study must have the same, otherwise :class:`StudyConflictError`. A rerun may raise the
        evaluation budget. ``budget`` (a frontier's loosest point), ``frontier`` (its points),
        ``kind``, ``dtype`` and ``calibration`` are stored as typed columns at creation, for the
        commands that later read the study (plans, checkpoints, comparisons); ``spec`` is kept as
        written, for ``resume``.
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
                           status=RUNNING, created_at=now, updated_at=now,
                           **typed_columns(budget or Budget(), kind, dtype, calibration,
                                           frontier))
            s.add(row)
            s.flush()
            return _study(row), True

    def _study_id(self, s: Session, study: StudyKey) -> int:
        """The id of ``study`` (an id is taken as given; a name is looked up, not decoded)."""
        if isinstance(study, int):
            return study
        found = s.scalar(select(StudyRow.id).where(StudyRow.name == study))
        if found is None:
            self._not_found(s, study)
        return found

    def _not_found(self, s: Session, study: StudyKey) -> NoReturn:
        known = s.scalars(select(StudyRow.name).order_by(StudyRow.name).limit(10)).all()
        hint = f"; studies here: {', '.join(known)}" if known else "; the database is empty"
        raise StudyNotFoundError(f"no study {study!r} in {self.masked_url}{hint}")

    def study(self, study: StudyKey) -> StudyRecord:
        """The study named ``study`` (or of that id); :class:`StudyNotFoundError` if none."""
        with translating(self.url, f"read study {study!r}"), self._session() as s:
            where = StudyRow.id == study if isinstance(study, int) else StudyRow.name == study
            row = s.scalar(select(StudyRow).where(where))
            if row is None:
                self._not_found(s, study)
            return _study(row)

    def studies(self) -> list[StudyRecord]:
        with translating(self.url, "list studies"), self._session() as s:
            return [_study(r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id))]

    def set_study_phase(self, study_id: int, phase: str | None) -> None:
        """What the study's driver is doing now (a setup phase, "searching")."""
        with translating(self.url, "update study"), self._session() as s, s.begin():
            row = s.get(StudyRow, study_id)
            assert row is not None
            row.phase, row.updated_at = phase, _now()

    def set_study_status(self, study_id: int, status: str) -> None:
        with translating(self.url, "update study"), self._session() as s, s.begin():
            row = s.get(StudyRow, study_id)
            assert row is not None
            row.status, row.updated_at = status, _now()

    def set_evaluations(self, study_id: int, evaluations: int) -> None:
        """Set the evaluation budget of a study (``resume --extend``); it runs again."""
        with translating(self.url, "update study"), self._session() as s, s.begin():
            row = s.get(StudyRow, study_id)
            assert row is not None
            row.evaluations, row.status, row.updated_at = evaluations, RUNNING, _now()

    # -- writing trials: the one path ----------------------------------------------------------
    def writer(self, study_id: int, seed: int = 0, **options: Any) -> TrialWriter:
        """The buffered writer of ``study_id``'s trials (the caller should hold its lease; see
        :class:`~mpsearch.storage.writer.TrialWriter` for numbering and commits)."""
        return TrialWriter(self, study_id, seed, **options)

    def start_trial(self, study_id: int, candidate: Candidate, avg_bits: float,
                    total_bytes: float, feasible: bool, seed: int) -> int:
        """Record one dispatched trial through a writer of its own; returns its number.

        The number is max(number) + 1; two callers racing for the same number meet the unique
        (study, number) constraint, and the loser retries with the next one after a random wait
        that grows with its tries. (A search driver holds the study's lease and keeps one
        :meth:`writer` for its run instead.)
        """
        number = -1
        for attempt in range(_NUMBER_RETRIES):
            writer = self.writer(study_id, seed, retry_seconds=0)  # raise at once, never buffer
            try:
                number = writer.start(candidate, avg_bits, total_bytes, feasible)
                writer.flush()
                return number
            except StoreError:
                if attempt == _NUMBER_RETRIES - 1 or not self._number_taken(study_id, number):
                    raise
            finally:
                writer.close()
            # a random wait before the next try, growing: a caller slower than the others (a new
            # connection per try) otherwise lost every race to them (20 in a row, seen on CI)
            time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise AssertionError("unreachable")

    def _number_taken(self, study_id: int, number: int) -> bool:
        with translating(self.url, "record trial"), self._session() as s:
            return s.scalar(select(func.count()).where(TrialRow.study_id == study_id,
                                                       TrialRow.number == number)) == 1

    def finish_trial(self, study_id: int, number: int, objective: float | None,
                     worker: str | None, error: str | None, eval_seconds: float | None) -> None:
        """Record the result of trial ``number`` through a writer of its own."""
        writer = self.writer(study_id, retry_seconds=0)  # raise at once, never buffer
        try:
            writer.finish(number, objective, worker, error, eval_seconds)
            writer.flush()
        finally:
            writer.close()

    def mark_running_failed(self, study_id: int, reason: str) -> int:
        """Mark trials left ``running`` (by a driver that died) as failed; returns how many."""
        with translating(self.url, "recover trials"), self._session() as s, s.begin():
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == study_id,
                                                    TrialRow.status == RUNNING)).all()
            for row in rows:
                row.status, row.error, row.finished_at = FAILED, reason, _now()
                row.interrupted = True
            return len(rows)

    # -- reading trials ------------------------------------------------------------------------
    def trials(self, study: StudyKey, status: str | None = None) -> list[TrialRecord]:
        with translating(self.url, "read trials"), self._session() as s:
            q = select(TrialRow).where(TrialRow.study_id == self._study_id(s, study))
            if status is not None:
                q = q.where(TrialRow.status == status)
            return [_trial(r) for r in s.scalars(q.order_by(TrialRow.number))]

    def counts(self, study: StudyKey) -> dict[str, int]:
        with translating(self.url, "count trials"), self._session() as s:
            rows = s.execute(select(TrialRow.status, func.count()).where(
                TrialRow.study_id == self._study_id(s, study)).group_by(TrialRow.status)).all()
            return {status: n for status, n in rows}

    def best(self, study: StudyKey, top: int = 5, max_bits: float | None = None,
             max_bytes: float | None = None, origin: str | None = None) -> list[TrialRecord]:
        """The ``top`` completed, budget-feasible trials of lowest objective.

        Confirmed trials (re-scored on every calibration sample after the search, see
        ``cluster/confirm.py``) come first, by their confirmed figure: the search's own figure
        may be on fewer samples, and the lowest of many noisy figures is optimistic. Then the
        trials scored on every sample, then those screened on fewer (multi-step selection),
        each by objective. Ties are broken by trial number, so the answer is deterministic.
        Optional filters tighten the budget further (``max_bits``, ``max_bytes``) or keep one
        strategy's trials.
        """
        with translating(self.url, "query best trials"), self._session() as s:
            q = select(TrialRow).where(TrialRow.study_id == self._study_id(s, study),
                                       TrialRow.status == COMPLETE, TrialRow.feasible.is_(True))
            q = q.where(*budget_clauses(max_bits, max_bytes, origin))
            q = q.order_by(TrialRow.confirmed.is_(None), TrialRow.confirmed,
                           TrialRow.samples.is_not(None), TrialRow.objective,
                           TrialRow.number).limit(top)
            return [_trial(r) for r in s.scalars(q)]

    def baselines(self, study: StudyKey) -> list[TrialRecord]:
        """Completed uniform-baseline trials, cheapest first (a handful of rows, read by SQL)."""
        with translating(self.url, "read baselines"), self._session() as s:
            q = (select(TrialRow)
                 .where(TrialRow.study_id == self._study_id(s, study),
                        TrialRow.status == COMPLETE, TrialRow.origin == BASELINE_ORIGIN)
                 .order_by(TrialRow.avg_bits, TrialRow.number))
            return [_trial(r) for r in s.scalars(q)]
