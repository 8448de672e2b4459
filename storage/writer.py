"""The search driver's hot path: trial starts and results written in one transaction per loop turn.

``TrialStore.start_trial``/``finish_trial`` cost a transaction each, and ``start_trial`` a
``max(number)`` query. The driver of a study holds its lease (:mod:`.lease`), so it is the only
writer of that study's trials: it numbers trials in memory and buffers what happened since the last
flush. The executor flushes before it dispatches anything and before it waits for results, so

* a trial's row exists (``running``) before its candidate reaches a worker, and
* a result is committed before the driver blocks on the next one: a crash loses at most the
  evaluations in flight, which resume finds as ``running`` rows and dispatches again.

One connection is kept for the whole run (no pool checkout or ping per transaction).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from mpsearch.spaces.space import Candidate

from .errors import translating
from .models import COMPLETE, FAILED, RUNNING, StudyRow, TrialRow

if TYPE_CHECKING:
    from .store import TrialStore

_trials = TrialRow.__table__
_update_result = (
    update(_trials)
    .where(and_(_trials.c.study_id == bindparam("b_study"), _trials.c.number == bindparam("b_number")))
    .values({c: bindparam(f"v_{c}") for c in ("status", "objective", "worker", "error",
                                              "eval_seconds", "finished_at", "told_after",
                                              "extra")})
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class TrialWriter:
    """Buffers trial starts and results of one study and writes them in one transaction."""

    def __init__(self, store: TrialStore, study_id: int, seed: int) -> None:
        self.store, self.study_id, self.seed = store, study_id, seed
        self._conn: Connection | None = None
        with translating(store.url, "read trial numbers"), store.engine.connect() as conn:
            last = conn.scalar(select(func.max(TrialRow.number))
                               .where(TrialRow.study_id == study_id))
        self.next_number = 0 if last is None else last + 1
        self._starts: list[dict[str, Any]] = []
        self._results: list[dict[str, Any]] = []
        self._state: dict[str, Any] | None = None
        self.flushes = 0

    def start(self, candidate: Candidate, avg_bits: float, total_bytes: float, feasible: bool,
              retry_of: int | None = None) -> int:
        """Number a dispatched trial (written at the next flush)."""
        number = self.next_number
        self.next_number += 1
        self._starts.append(dict(
            study_id=self.study_id, number=number, status=RUNNING, origin=candidate.origin,
            choices=list(candidate.choices), samples=candidate.samples, objective=None,
            avg_bits=avg_bits, total_bytes=total_bytes, feasible=feasible, seed=self.seed,
            started_at=_now(), retry_of=retry_of))
        return number

    def finish(self, number: int, objective: float | None, worker: str | None, error: str | None,
               eval_seconds: float | None, extra: dict[str, float] | None = None) -> None:
        """Record a result; ``told_after`` is how many trials were dispatched when it was told."""
        self._results.append(dict(
            b_study=self.study_id, b_number=number,
            v_status=COMPLETE if objective is not None else FAILED, v_objective=objective,
            v_worker=worker, v_error=error, v_eval_seconds=eval_seconds, v_finished_at=_now(),
            v_told_after=self.next_number, v_extra=extra or None))

    def _connect(self) -> Connection:
        """The run's connection. A commit need not wait for the disk: after a crash of the driver
        every commit is there; after a crash of the machine or database server the last moments
        may be missing, which resume handles like trials in flight (it replays what is stored)."""
        conn = self.store.engine.connect()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")  # WAL: fsync at checkpoints only
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET synchronous_commit = off")
        conn.commit()
        return conn

    def set_state(self, state: dict[str, Any]) -> None:
        """A snapshot of the searcher for ``mpsearch status``, written with the next flush."""
        self._state = state

    @property
    def pending(self) -> int:
        return len(self._starts) + len(self._results)

    def flush(self) -> None:
        if not self._starts and not self._results and self._state is None:
            return
        starts, results, state = self._starts, self._results, self._state
        with translating(self.store.url, "record trials"):
            if self._conn is None:
                self._conn = self._connect()
            try:
                with self._conn.begin():
                    if starts:
                        self._conn.execute(insert(_trials), starts)
                    if results:
                        self._conn.execute(_update_result, results)
                    if state is not None:
                        self._conn.execute(update(StudyRow).where(StudyRow.id == self.study_id)
                                           .values(searcher_state=state, updated_at=_now()))
            except BaseException:
                self._conn.close()  # a broken connection is not reused
                self._conn = None
                raise
        self._starts, self._results, self._state = [], [], None
        self.flushes += 1

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
