"""A database password given inline in a spec is never stored, exported, reported or logged.

A real study runs (``mpsearch run`` in-process on the shared Ray) with ``storage.url`` carrying a
password for a PostgreSQL role made for the test; then every table of the database (every schema,
Optuna's included), the plan export, the Parquet export, the HTML report, ``status``/``best``
output, everything the commands printed and the Ray logs written meanwhile are scanned for it.
On SQLite (no password in its URL) the ``env:`` reference is what the stored spec keeps.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_password_url(pg_url):
    """A database owned by a new role with a password; its URL carries the password inline."""
    suffix = uuid.uuid4().hex[:10]
    role, password, db = f"mps_secret_{suffix}", f"pw-{suffix}-S3cret", f"mps_secret_{suffix}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{db}" OWNER {role}'))
    base = make_url(pg_url)
    url = base.set(username=role, password=password, database=db)
    yield url.render_as_string(hide_password=False), password
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def every_row_as_text(url: str) -> tuple[str, list[str]]:
    """Every row of every table, as text; and the tables read (``schema.table`` outside public)."""
    engine = create_engine(url)
    chunks, tables = [], []
    with engine.connect() as conn:
        insp = inspect(conn)
        schemas = [s for s in insp.get_schema_names() if s not in ("information_schema",)
                   and not s.startswith("pg_")] if conn.dialect.name == "postgresql" else [None]
        for schema in schemas:
            for table in insp.get_table_names(schema=schema):
                name = f'"{schema}"."{table}"' if schema else f'"{table}"'
                tables.append(table if schema in (None, "public") else f"{schema}.{table}")
                for row in conn.execute(text(f"SELECT * FROM {name}")):
                    chunks.append(repr(tuple(row)))
    engine.dispose()
    return "\n".join(chunks), tables


def ray_logs_since(start: float) -> str:
    import ray

    node = ray._private.worker._global_node  # the shared session's node: its logs folder
    logs = Path(node.get_logs_dir_path())
    texts = []
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= start and path.stat().st_size < 50 << 20:
            texts.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(texts)


def run_and_read_everything(cli, spec_data, url, tmp_path, address, env=None):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_data))
    outputs = []

    def run(*args):
        res = cli.invoke(*args, env=env)
        assert res.code == 0, res.stderr
        outputs.extend([res.stdout, res.stderr])
        return res

    run("run", str(spec), "--address", address)
    study = spec_data["study"]
    run("status", "--db", url, "--json")
    run("best", "--study", study, "--db", url, "--json")
    run("export", "--study", study, "--db", url, "--out", str(tmp_path / "plan.json"))
    run("trials", "--study", study, "--db", url, "--out", str(tmp_path / "trials.parquet"))
    run("report", "--study", study, "--db", url, "--out", str(tmp_path / "report.html"))
    files = [(tmp_path / n).read_bytes().decode(errors="replace")
             for n in ("plan.json", "trials.parquet", "report.html")]
    return outputs, files


def spec_fields(model, study, url):
    return {"study": study, "model": {"name": model}, "calibration": {"samples": 4, "seq_len": 16},
            "space": {"layers": [{"match": r"layers\.\d+\.",
                                  "options": ["int4-g32-asym", "int8-g32-asym", "fp16"]}]},
            "budget": {"avg_bits": 6.0}, "searcher": {"name": "optuna"},
            "evaluations": 6, "workers": {"count": 1, "cpus": 1}, "storage": {"url": url}}


def test_an_inline_password_is_nowhere(ray_session, pg_password_url, tiny_llama_path, tmp_path,
                                       cli_inprocess):
    url, password = pg_password_url
    start = time.time()
    address = ray_session.get_runtime_context().gcs_address
    outputs, files = run_and_read_everything(
        cli_inprocess, spec_fields(tiny_llama_path, "secret", url), url, tmp_path, address)
    rows, tables = every_row_as_text(url)
    assert "mps_study" in tables and any(t.startswith("optuna.") for t in tables), tables
    assert "secret" in rows  # it scanned the study's rows
    for name, blob in [("database", rows), ("ray logs", ray_logs_since(start)),
                       *[(f"output {i}", o) for i, o in enumerate(outputs)],
                       *[(f"file {i}", f) for i, f in enumerate(files)]]:
        assert password not in blob, f"the password is in the {name}"
    from mpsearch.storage import TrialStore

    stored = TrialStore(url, create=False).study("secret").spec["storage"]["url"]
    assert stored == make_url(url).render_as_string(hide_password=True)  # masked, still usable


def test_an_env_reference_is_stored_as_written(ray_session, tiny_llama_path, tmp_path,
                                               cli_inprocess):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    env = {"MPSEARCH_TEST_STORE": url}
    address = ray_session.get_runtime_context().gcs_address
    run_and_read_everything(cli_inprocess, spec_fields(tiny_llama_path, "env-ref",
                                                       "env:MPSEARCH_TEST_STORE"),
                            url, tmp_path, address, env=env)
    from mpsearch.storage import TrialStore

    record = TrialStore(url, create=False).study("env-ref")
    assert record.spec["storage"]["url"] == "env:MPSEARCH_TEST_STORE"
    # resume reads the stored spec: the reference need not be set where resume runs
    res = cli_inprocess.invoke("resume", "--study", "env-ref", "--db", url, "--address", address)
    assert res.code == 0 and "the study already has its evaluations" in res.stderr, res.stderr
