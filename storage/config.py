"""The job spec's section owned by the store: where trials are kept.

Kept free of SQLAlchemy so a spec can be validated (and a job submitted) without opening a database.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, field_validator

DEFAULT_URL = "sqlite:///mpsearch.db"


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; or ``env:NAME`` to read it from
    # the environment variable NAME where the job runs (keeps a password out of the spec file).
    url: str = DEFAULT_URL

    @field_validator("url")
    @classmethod
    def _from_environment(cls, url: str) -> str:
        if not url.startswith("env:"):
            return url
        name = url[4:]
        value = os.environ.get(name, "")
        if not value:
            raise ValueError(f"environment variable {name} (named by {url!r}) is not set")
        return value
