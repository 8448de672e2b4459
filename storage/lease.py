"""A per-study lease, so that two drivers never run one study at the same time.

One ``mps_lease`` row per study holds the owner and an expiry. Taking the lease is one statement
that succeeds only when the row is free (expired, or already ours); the first driver of a study
inserts the row, and of two racing inserts the unique key lets one win. A heartbeat thread renews
the lease every ``ttl / 3`` seconds; a driver that crashed stops renewing and its lease expires.
A lease held by a process of this host that no longer exists is taken over at once (a SIGKILLed
driver need not be waited for).

Times are the drivers' clocks (UTC); keep ``ttl`` well above the clock skew between machines.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .errors import StoreError, translating
from .models import LeaseRow
from .store import TrialStore

DEFAULT_TTL = 30.0  # seconds without a heartbeat before another driver may take the study


class StudyLeasedError(StoreError):
    """Another driver holds the study."""


class LeaseLostError(StoreError):
    """This driver's lease expired or was taken over while it ran."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_local_owner(owner: str) -> bool:
    """True when ``owner`` names a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StudyLease:
    """The right to drive one study; use as a context manager around the run."""

    def __init__(self, store: TrialStore, study_id: int, study_name: str,
                 ttl: float = DEFAULT_TTL, owner: str | None = None) -> None:
        self.store, self.study_id, self.study_name = store, study_id, study_name
        self.ttl = ttl
        self.owner = owner or default_owner()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- single statements -------------------------------------------------------------------
    def _take(self, holder: str | None = None) -> bool:
        """Take the row if it is free (or held by ``holder``); one statement, so atomic."""
        now = _now()
        values = dict(owner=self.owner, acquired_at=now, heartbeat_at=now,
                      expires_at=now + timedelta(seconds=self.ttl))
        free = or_(LeaseRow.expires_at < now, LeaseRow.owner == self.owner)
        if holder is not None:
            free = or_(free, LeaseRow.owner == holder)
        with translating(self.store.url, f"take the lease of study {self.study_name!r}"):
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(insert(LeaseRow).values(study_id=self.study_id, **values))
                return True
            except IntegrityError:
                pass  # the row exists: take it only if free
            with self.store.engine.begin() as conn:
                result = conn.execute(update(LeaseRow).where(
                    LeaseRow.study_id == self.study_id, free).values(**values))
                return result.rowcount == 1

    def acquire(self) -> StudyLease:
        if self._take():
            return self
        with translating(self.store.url, "read the study lease"), self.store.engine.connect() as c:
            row = c.execute(select(LeaseRow.owner, LeaseRow.heartbeat_at, LeaseRow.expires_at)
                            .where(LeaseRow.study_id == self.study_id)).one()
        if _dead_local_owner(row.owner) and self._take(holder=row.owner):
            return self
        now = _now()
        raise StudyLeasedError(
            f"study {self.study_name!r} is being run by {row.owner} (last heartbeat "
            f"{(now - row.heartbeat_at).total_seconds():.0f} s ago); wait until it finishes or "
            f"its lease expires in {max((row.expires_at - now).total_seconds(), 0):.0f} s")

    def renew(self) -> bool:
        """Extend the lease if still ours; False when another driver took it."""
        now = _now()
        with translating(self.store.url, "renew the study lease"), self.store.engine.begin() as c:
            # still ours if no driver took it meanwhile (taking sets the owner), even when it
            # expired while the database was away
            result = c.execute(update(LeaseRow).where(
                LeaseRow.study_id == self.study_id, LeaseRow.owner == self.owner).values(
                heartbeat_at=now, expires_at=now + timedelta(seconds=self.ttl)))
            return result.rowcount == 1

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with translating(self.store.url, "release the study lease"), self.store.engine.begin() as c:
            c.execute(update(LeaseRow).where(LeaseRow.study_id == self.study_id,
                                             LeaseRow.owner == self.owner)
                      .values(expires_at=_now()))

    # -- heartbeat ---------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                ok = self.renew()
            except StoreError:
                continue  # the database is away: try again; past expiry, renew says lost
            if not ok:
                self.lost.set()
                return

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when the heartbeat found the lease gone."""
        if self.lost.is_set():
            raise LeaseLostError(f"lost the lease of study {self.study_name!r} (another driver took "
                                 "it after missed heartbeats); this driver stops")

    def __enter__(self) -> StudyLease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="mpsearch-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.release()
        except StoreError:
            if exc_type is None:
                raise
            # the run is failing already (often: the database is away); the lease then expires
            # by itself, and the first error is the one to report
