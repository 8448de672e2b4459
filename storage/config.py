"""The job spec's section owned by the store: where trials are kept.

Kept free of SQLAlchemy so a spec can be validated (and a job submitted) without opening a database.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

DEFAULT_URL = "sqlite:///mpsearch.db"
# scheme://user:PASSWORD@ as SQLAlchemy's make_url reads it (the password ends at the first "@")
_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@]*:)(?P<password>[^@]*)(?=@)")


def mask_password(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***`` (storage.errors.mask_url's rule,
    without SQLAlchemy)."""
    return _PASSWORD.sub(lambda m: m["head"] + "***", url, count=1)


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; or ``env:NAME`` to read it from
    # the environment variable NAME where the job runs (keeps a password out of the spec file).
    # ``url`` is the resolved URL; written out (the stored spec, exports) it is the ``env:NAME``
    # reference it came from, or the URL with its password masked: a secret is never stored.
    url: str = DEFAULT_URL
    _reference: str | None = PrivateAttr(default=None)
    # Seconds a run keeps going while the database is away (a restart, a failover), its results
    # buffered, before it stops; None: MPSEARCH_DB_RETRY_SECONDS, else 300 (storage/retry.py).
    retry_seconds: float | None = Field(default=None, ge=0, le=86_400)

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

    @model_validator(mode="wrap")
    @classmethod
    def _keep_reference(cls, data: Any, handler: Any) -> Any:
        config = handler(data)
        raw = data.get("url") if isinstance(data, dict) else None
        if isinstance(raw, str) and raw.startswith("env:"):
            config._reference = raw
        return config

    @field_serializer("url")
    def _without_secret(self, url: str) -> str:
        return self._reference or mask_password(url)
