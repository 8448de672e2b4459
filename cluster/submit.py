"""Submitting a search to a Ray cluster through the Jobs API (``mpsearch submit``).

The spec is parsed and validated here, then sent as data: it is written, re-serialized from the
parsed mapping with a safe YAML dumper, as ``job.yaml`` into a temporary folder that becomes the
job's ``working_dir``; the job's entrypoint is ``mpsearch run job.yaml``, the same search loop as
a local run, connected to the cluster through the ``RAY_ADDRESS`` that Ray sets for job drivers.
Nothing from the spec is executed. ``storage.url: env:NAME`` is sent as written and resolved on
the cluster, so a database password need not leave the cluster's own environment.

Token authentication: the Jobs client sends ``Authorization: Bearer <token>``, the token found
where Ray documents it: ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token`` (what ``ray get-auth-token`` prints). It is never turned off.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mpsearch.spaces.errors import SpecError
from mpsearch.storage.config import DEFAULT_URL
from mpsearch.storage.errors import mask_url

from .errors import ClusterError
from .spec import load_spec, parse_spec

ENTRYPOINT = "mpsearch run job.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def auth_token() -> str | None:
    """The Ray token from its documented sources, in Ray's order of precedence."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the Ray token: "
                               f"{exc.strerror or exc}") from None
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() or None if default.exists() else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address`` with the token header; unreachable → ClusterError."""
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as exc:  # requests' and Ray's errors: the dashboard cannot be used
        hint = "" if token else " (no Ray token found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {_one_line(exc)}"
                           f"{hint}") from None


def spec_data(spec_path: str | Path) -> dict[str, Any]:
    """The spec file's mapping, validated as a local run validates it.

    An ``env:`` storage URL is resolved where the job runs, so it is not looked up here; a relative
    SQLite path is refused (the job would write it inside its temporary working_dir).
    """
    path = Path(spec_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):  # ValueError: not UTF-8, NUL
        raw = None
    if not isinstance(raw, dict):
        load_spec(path)  # raises the precise one-line error
        raise SpecError(f"{path}: a job spec is a mapping of fields")
    storage = raw["storage"] if isinstance(raw.get("storage"), dict) else {}
    url = str(storage.get("url", DEFAULT_URL))
    if url.startswith("env:"):
        parse_spec({**raw, "storage": {**storage, "url": "sqlite://"}}, str(path))
        return raw
    parse_spec(raw, str(path))
    if url.startswith("sqlite") and not url.split(":///", 1)[-1].startswith("/"):
        raise ClusterError(f"{path}: storage.url {mask_url(url)} is a relative SQLite path, which "
                           "a cluster job would write inside its temporary working_dir; use "
                           "PostgreSQL (e.g. env:MPSEARCH_DB) or an absolute path")
    return raw


def submit(spec_path: str | Path, address: str, client: Any = None) -> str:
    """Submit the spec as a Ray job; returns the job's submission id."""
    data = spec_data(spec_path)
    client = client or job_client(address)
    study = str(data["study"])
    with tempfile.TemporaryDirectory(prefix="mpsearch-job-") as folder:
        (Path(folder) / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            return client.submit_job(
                entrypoint=ENTRYPOINT,
                submission_id=f"mpsearch-{study}-{uuid.uuid4().hex[:8]}",
                runtime_env={"working_dir": folder,
                             "env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
                metadata={"mpsearch_study": study})
        except Exception as exc:
            raise ClusterError(f"the Ray cluster at {address} refused the job: "
                               f"{_one_line(exc)}") from None


def wait(client: Any, job_id: str, poll: float = 2.0,
         on_status: Callable[[str], None] | None = None) -> str:
    """Follow a job until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""
    last = ""
    while True:
        try:
            status = str(client.get_job_status(job_id))
        except Exception as exc:
            raise ClusterError(f"lost the Ray dashboard while following {job_id}: "
                               f"{_one_line(exc)}") from None
        status = status.rsplit(".", 1)[-1]
        if status != last and on_status is not None:
            on_status(status)
        last = status
        if status in TERMINAL:
            return status
        time.sleep(poll)
