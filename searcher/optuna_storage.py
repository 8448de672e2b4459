"""Where an Optuna study lives beside an mpsearch study.

Optuna's RDB storage and mpsearch's store both manage an ``alembic_version`` table, so they
never share a schema: with SQLite the Optuna study gets its own file beside the mpsearch one
(``foo.db`` → ``foo.optuna.db``); with PostgreSQL it gets the schema ``optuna`` of the same
database (``options=-csearch_path=optuna`` on the URL, the schema created if missing). Optuna's
dashboard opens the derived URL directly: ``optuna-dashboard sqlite:///foo.optuna.db``.

SQLAlchemy is imported inside the functions, so importing the searcher package stays light.
"""

from __future__ import annotations

from mpsearch.spaces.errors import SpecError

OPTUNA_SCHEMA = "optuna"


def optuna_storage_url(mpsearch_url: str, create_schema: bool = True) -> str:
    """The Optuna RDB URL for the mpsearch store at ``mpsearch_url`` (see the module doc)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(mpsearch_url)
    except ArgumentError:
        raise SpecError(f"storage.url: {mpsearch_url!r} is not a database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:") or db.startswith("file::memory:"):
            raise SpecError("storage.url: an in-memory SQLite store has no file to put the Optuna "
                            "study beside; pass storage=None to keep the Optuna study in memory")
        stem = db[:-3] if db.endswith(".db") else db
        return url.set(database=f"{stem}.optuna.db").render_as_string(hide_password=False)
    if backend == "postgresql":
        derived = url.update_query_dict({"options": f"-csearch_path={OPTUNA_SCHEMA}"})
        if create_schema:
            _create_schema(url.render_as_string(hide_password=False))
        return derived.render_as_string(hide_password=False)
    raise SpecError(f"storage.url: the Optuna searcher supports sqlite and postgresql stores, "
                    f"not {backend!r}")


def _create_schema(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
    finally:
        engine.dispose()
