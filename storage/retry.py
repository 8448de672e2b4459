"""A database that goes away and comes back: which errors are transient, and the retry window.

Managed PostgreSQL restarts and fails over as routine; a search may have run for hours by then.
An error is *transient* when a later attempt on a new connection can succeed: the connection was
reset or invalidated, the server terminated the backend (``pg_terminate_backend``, SQLSTATE 57P01),
is shutting down or starting (57P02, 57P03), refused the connection (no SQLSTATE), or a
serialization failure or deadlock was reported (40001, 40P01); on SQLite, a locked database.
Anything else (a missing table, a constraint, a bad password) is not retried.

:class:`Outage` is the writer's view of one outage: the first failure starts a window of
``seconds`` (the spec's ``storage.retry_seconds``, else ``MPSEARCH_DB_RETRY_SECONDS``, else
:data:`DEFAULT_RETRY_SECONDS`); attempts back off exponentially (0.5 s doubling to 10 s); what
was to be written stays buffered meanwhile, and the first success ends the outage. Only when the
window is over does :class:`DatabaseGoneError` stop the run, in one line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from .errors import StoreError

DEFAULT_RETRY_SECONDS = 300.0  # long enough for a managed PostgreSQL failover or restart
RETRY_ENV = "MPSEARCH_DB_RETRY_SECONDS"
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 10.0
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "40001", "40P01", "53300"}

log = logging.getLogger("mpsearch.storage")
T = TypeVar("T")


class DatabaseGoneError(StoreError):
    """The database stayed unreachable for longer than the retry window."""


def default_retry_seconds() -> float:
    """``MPSEARCH_DB_RETRY_SECONDS`` if set (a non-negative number), else the default."""
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise StoreError(f"{RETRY_ENV}={text!r}: give seconds between 0 and 86400")
    return value


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may pass on a new connection (see the module docstring)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code:
        return code.startswith("08") or code in _TRANSIENT_SQLSTATES
    module = type(orig).__module__
    if module.startswith("psycopg"):  # a connection-level failure has no SQLSTATE
        return isinstance(exc, OperationalError)
    if module.startswith("sqlite3"):
        return "locked" in str(orig) or "busy" in str(orig)
    return False


class Outage:
    """The retry window of one writer (see the module docstring)."""

    def __init__(self, seconds: float | None = None, what: str = "the database",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = default_retry_seconds() if seconds is None else seconds
        self.what, self.clock = what, clock
        self.since: float | None = None  # when the current outage began
        self.attempts = 0
        self.next_at = 0.0
        self.outages = 0  # outages survived, for the tests and the closing line

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def ready(self) -> bool:
        """True unless an outage is on and its next attempt is not due yet."""
        return self.since is None or self.clock() >= self.next_at

    def failed(self, exc: StoreError, pending: int) -> None:
        """Note a failed attempt; re-raise ``exc`` if it is not transient, and raise
        :class:`DatabaseGoneError` once the window is over."""
        if not exc.transient or self.seconds == 0:  # 0: the caller retries, or none wanted
            raise exc
        now = self.clock()
        if self.since is None:
            self.since = now
            log.warning(f"{exc}; retrying for up to {self.seconds:g} s, results are kept "
                        "in memory meanwhile")
        self.attempts += 1
        if now - self.since >= self.seconds:
            raise DatabaseGoneError(
                f"{self.what} stayed unreachable for {now - self.since:.0f} s ({self.attempts} "
                f"attempts; last: {exc}); {pending} unsaved records are dropped and run again "
                "on resume") from None
        self.next_at = now + min(FIRST_BACKOFF * 2 ** (self.attempts - 1), MAX_BACKOFF)

    def recovered(self) -> None:
        if self.since is not None:
            log.warning(f"{self.what} is back after {self.clock() - self.since:.1f} s "
                        f"({self.attempts} failed attempts); nothing was lost")
            self.outages += 1
        self.since, self.attempts = None, 0

    def attempt(self, write: Callable[[], T], pending: int, wait: bool = False) -> T | None:
        """``write()`` now if due; None when it failed transiently (or is not due) and the
        window is still open. With ``wait``, sleep through the backoff until it succeeds."""
        while True:
            if not self.ready():
                if not wait:
                    return None
                time.sleep(max(self.next_at - self.clock(), 0.0))
            try:
                result = write()
            except StoreError as exc:
                self.failed(exc, pending)
                if not wait:
                    return None
                continue
            self.recovered()
            return result
