"""The one write path of trials: starts and results of one study, buffered, committed in groups.

Every trial reaches the database through a :class:`TrialWriter` (``TrialStore.writer``): the search
driver keeps one for its run; ``TrialStore.start_trial``/``finish_trial`` use one per call. The
driver of a study holds its lease (:mod:`.lease`), so it is the only writer of that study's trials:
it numbers trials in memory and buffers what happened since the last commit.

**Group commits.** A commit is one transaction with every buffered start and result (a trial that
started and finished in the same group is inserted finished, with no UPDATE). The driver asks for
a commit before it dispatches and before it blocks on results (:meth:`TrialWriter.maybe_flush`);
the writer commits when ``group`` results are waiting or the oldest buffered event is ``window``
seconds old, and the executor wakes up to commit when the window closes while it waits
(:meth:`TrialWriter.due_in`). So a result is committed at most ``window`` seconds after it is
told, however long the next evaluation takes, and a fast search pays one transaction per group
instead of one per result.

**What is acknowledged.** A trial counts once its commit is done. A commit is always a prefix of
what happened (the buffer is written whole, in order), so after a crash the database holds an
earlier moment of the run: results the searcher was told but the writer had not committed are
then exactly like evaluations in flight. Resume replays the committed trials, marks trials left
``running`` interrupted, and dispatches their candidates again (``cluster/resume.py``); a trial
whose start was not committed either is simply asked again. Nothing committed is ever lost.

**A database that goes away** (a restart, a failover: a transient error, :mod:`.retry`) keeps
everything buffered: the run goes on, and later commits retry with backoff for ``retry_seconds``.
A commit whose connection died may still have been applied, so a retry inserts only the starts
that are not stored yet (a stored one's result becomes an update).

One connection is kept for the whole run (no pool checkout or ping per transaction).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from mpsearch.spaces.space import Candidate

from .errors import translating
from .models import COMPLETE, FAILED, RUNNING, StudyRow, TrialRow
from .retry import Outage

if TYPE_CHECKING:
    from .store import TrialStore

_trials = TrialRow.metadata.tables[TrialRow.__tablename__]
_RESULT_FIELDS = ("status", "objective", "worker", "error", "eval_seconds", "finished_at",
                  "told_after", "extra")
_update_result = (
    update(_trials)
    .where(and_(_trials.c.study_id == bindparam("b_study"), _trials.c.number == bindparam("b_number")))
    .values({c: bindparam(f"v_{c}") for c in _RESULT_FIELDS})
)
_update_confirmed = (
    update(_trials)
    .where(and_(_trials.c.study_id == bindparam("b_study"), _trials.c.number == bindparam("b_number")))
    .values(confirmed=bindparam("v_confirmed"))
)


# At most this many results wait for one commit, and none longer than this many seconds: 256
# results are one short transaction on either database; 50 ms is below what a person watching
# `mpsearch best` notices, and bounds the evaluations a crash can make the study repeat.
DEFAULT_GROUP = 256
DEFAULT_WINDOW = 0.05


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class TrialWriter:
    """Buffers trial starts and results of one study and commits them in groups (see the module
    docstring for when, and for what a crash loses)."""

    def __init__(self, store: TrialStore, study_id: int, seed: int, *,
                 group: int = DEFAULT_GROUP, window: float = DEFAULT_WINDOW,
                 retry_seconds: float | None = None) -> None:
        self.store, self.study_id, self.seed = store, study_id, seed
        self.group, self.window = group, window
        self._since: float | None = None  # when the oldest uncommitted event was buffered
        self._conn: Connection | None = None
        # how long a database that went away is retried, the buffer kept (None: the default)
        self.outage = Outage(retry_seconds, f"database {store.masked_url}")
        with translating(store.url, "read trial numbers"), store.engine.connect() as conn:
            last = conn.scalar(select(func.max(TrialRow.number))
                               .where(TrialRow.study_id == study_id))
        self.next_number = 0 if last is None else last + 1
        self._starts: list[dict[str, Any]] = []
        self._results: list[dict[str, Any]] = []
        self._confirms: list[dict[str, Any]] = []  # confirmed figures, applied after the results
        self._state: dict[str, Any] | None = None
        self.flushes = 0

    def start(self, candidate: Candidate, avg_bits: float, total_bytes: float, feasible: bool,
              retry_of: int | None = None) -> int:
        """Number a dispatched trial (written at the next flush)."""
        number = self.next_number
        self.next_number += 1
        self._buffered()
        self._starts.append(dict(
            study_id=self.study_id, number=number, status=RUNNING, origin=candidate.origin,
            choices=list(candidate.choices), samples=candidate.samples, objective=None,
            avg_bits=avg_bits, total_bytes=total_bytes, feasible=feasible, seed=self.seed,
            started_at=_now(), retry_of=retry_of, worker=None, error=None, eval_seconds=None,
            finished_at=None, told_after=None, extra=None, confirmed=None))
        return number

    def finish(self, number: int, objective: float | None, worker: str | None, error: str | None,
               eval_seconds: float | None, extra: dict[str, float] | None = None) -> None:
        """Record a result; ``told_after`` is how many trials were dispatched when it was told."""
        self._buffered()
        self._results.append(dict(
            b_study=self.study_id, b_number=number,
            v_status=COMPLETE if objective is not None else FAILED, v_objective=objective,
            v_worker=worker, v_error=error, v_eval_seconds=eval_seconds, v_finished_at=_now(),
            v_told_after=self.next_number, v_extra=extra or None))

    def confirm(self, number: int, confirmed: float | None) -> None:
        """Record trial ``number``'s confirmed figure (its objective re-scored on every calibration
        sample after the search; None: the re-score failed), written with the next commit."""
        self._buffered()
        self._confirms.append(dict(b_study=self.study_id, b_number=number,
                                   v_confirmed=confirmed))

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
        return len(self._starts) + len(self._results) + len(self._confirms)

    def _buffered(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def due_in(self) -> float | None:
        """Seconds until the buffer must be committed (0: now); None when nothing waits."""
        if self._since is None:
            return None
        if self.outage.ongoing:  # the database is away: the next attempt is due after the backoff
            return max(self.outage.next_at - time.monotonic(), 0.0)
        if len(self._results) >= self.group:
            return 0.0
        return max(self._since + self.window - time.monotonic(), 0.0)

    def maybe_flush(self) -> bool:
        """Commit if a commit is due (see :meth:`due_in`); True when it committed."""
        if self.due_in() != 0.0:
            return False
        return self.flush()

    def _fold(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The buffer as rows to insert and results to update: a result of a trial started in
        the same group goes into its inserted row."""
        starts = {row["number"]: row for row in self._starts}
        updates = []
        for result in self._results:
            row = starts.get(result["b_number"])
            if row is None:
                updates.append(result)
            else:
                row.update({f: result[f"v_{f}"] for f in _RESULT_FIELDS})
        return list(starts.values()), updates

    def flush(self, wait: bool = False) -> bool:
        """Commit everything buffered now, in one transaction; True when it committed. While the
        database is away (:mod:`.retry`) the buffer is kept and False returned until the backoff
        allows the next attempt; ``wait`` (the last commit of a run) sleeps through the backoff."""
        if not self._starts and not self._results and not self._confirms and self._state is None:
            return False
        return self.outage.attempt(self._commit, self.pending, wait=wait) is True

    def _commit(self) -> bool:
        (starts, results), state, confirms = self._fold(), self._state, self._confirms
        with translating(self.store.url, "record trials"):
            if self._conn is None:
                self._conn = self._connect()
            try:
                if starts and self.outage.ongoing:  # the lost connection may have committed
                    starts, results = self._not_stored(starts, results)
                with self._conn.begin():
                    if starts:
                        self._conn.execute(insert(_trials), starts)
                    if results:
                        self._conn.execute(_update_result, results)
                    if confirms:
                        self._conn.execute(_update_confirmed, confirms)
                    if state is not None:
                        self._conn.execute(update(StudyRow).where(StudyRow.id == self.study_id)
                                           .values(searcher_state=state, updated_at=_now()))
            except BaseException:
                self._conn.close()  # a broken connection is not reused
                self._conn = None
                raise
        self._starts, self._results, self._state, self._since = [], [], None, None
        self._confirms = []
        self.flushes += 1
        return True

    def _not_stored(self, starts: list[dict[str, Any]], results: list[dict[str, Any]]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The starts not in the database yet; a stored one's folded result becomes an update."""
        assert self._conn is not None
        stored = set(self._conn.scalars(select(TrialRow.number).where(
            TrialRow.study_id == self.study_id,
            TrialRow.number.in_([row["number"] for row in starts]))))
        self._conn.rollback()
        updates = [dict(b_study=self.study_id, b_number=row["number"],
                        **{f"v_{f}": row[f] for f in _RESULT_FIELDS})
                   for row in starts if row["number"] in stored and row["status"] != RUNNING]
        return [row for row in starts if row["number"] not in stored], results + updates

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
