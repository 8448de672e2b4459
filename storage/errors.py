"""Storage errors, and the one place database exceptions become the project's errors.

Database URLs appear in messages only with the password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mpsearch.spaces.errors import MpsearchError


class StoreError(MpsearchError):
    """The database cannot be reached or used; ``transient`` when a retry on a new connection
    may pass (see :mod:`.retry`)."""

    transient = False


class StudyNotFoundError(StoreError):
    """No study of that name."""


class StudyConflictError(StoreError):
    """A study of that name exists with a different spec."""


class TrialNotFoundError(StoreError):
    """No trial of that number in the study."""


def is_transient(exc: BaseException) -> bool:
    from .retry import is_transient as transient  # the classification lives with the retry

    return transient(exc)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparseable database URL>"


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return text[:300] if text else type(orig).__name__


@contextmanager
def translating(url: str, action: str) -> Iterator[None]:
    """Turn any SQLAlchemy error inside the block into a one-line :class:`StoreError`."""
    try:
        yield
    except ImportError as exc:  # create_engine imports the URL's driver (psycopg, ...) here
        module = (exc.name or "").partition(".")[0] or "its driver"
        extra = "'mpsearch[postgres]'" if module == "psycopg" else module
        raise StoreError(f"database {mask_url(url)}: cannot {action}: the database driver "
                         f"{module!r} is not installed (pip install {extra})") from None
    except ValueError as exc:
        if action != "connect":
            raise  # only parsing a URL and opening it raise ValueError for the user's input
        raise StoreError(f"database {mask_url(url)}: not a usable database URL: {exc}") from None
    except SQLAlchemyError as exc:
        masked = mask_url(url)
        reason = _reason(exc)
        if url and "@" in url:  # drivers may echo the DSN; never let a password through
            password = make_url(url).password
            if password:
                reason = reason.replace(str(password), "***")
        error = StoreError(f"database {masked}: cannot {action}: {reason}")
        error.transient = is_transient(exc)
        raise error from None


# The package that provides each DBAPI driver SQLAlchemy may ask for (psycopg ships with mpsearch).
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
                    "asyncpg": "asyncpg", "pymysql": "pymysql", "mysqldb": "mysqlclient"}


@contextmanager
def loading_driver(url: str) -> Iterator[None]:
    """Around ``create_engine``: a DBAPI driver that is not installed becomes a one-line
    :class:`StoreError` naming the package to install (not an ``ImportError`` traceback)."""
    try:
        yield
    except ImportError as exc:
        parsed: URL = make_url(url)
        driver = parsed.get_driver_name()
        package = _DRIVER_PACKAGES.get(driver, driver)
        raise StoreError(f"database {mask_url(url)}: the {parsed.get_backend_name()} driver "
                         f"{driver!r} is not installed ({exc}); install it: pip install "
                         f"'{package}'") from None
