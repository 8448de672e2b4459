"""Fixtures of the cluster tests: the real ``mpsearch`` entry point (``cluster.cli.main``) run in
this process, for fast tests.

``main`` is what the console script calls: typer's app inside the one place that turns the
project's errors into one line and an exit code. Running it here (click's isolation gives it its own
stdin, stdout, stderr and environment) costs milliseconds instead of a Python start per call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from mpsearch.cluster.cli import main


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def invoke(*args: str, env: dict[str, str | None] | None = None) -> CliResult:
    """Run ``mpsearch ARGS`` in-process; an exception other than SystemExit propagates (a bug)."""
    runner = CliRunner()
    argv = sys.argv
    with runner.isolation(env={"RAY_ADDRESS": None, "MPSEARCH_DB": None, **(env or {})}) as (
            out, err, _):
        sys.argv = ["mpsearch", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
        return CliResult(code, out.getvalue().decode(errors="replace"),
                         err.getvalue().decode(errors="replace"))


def assert_one_line_error(res: CliResult, *parts: str) -> None:
    """Exit 1 and exactly one line on stderr, starting ``error:``, with no blank line around it."""
    assert res.code == 1, (res.code, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.endswith("\n"), repr(res.stderr)
    assert res.stderr.count("\n") == 1, repr(res.stderr)
    for part in parts:
        assert part in res.stderr, res.stderr


@pytest.fixture
def cli_inprocess():
    """``invoke`` and ``assert_one_line_error`` (importlib mode cannot import a conftest)."""
    return type("InProcessCli", (), {"invoke": staticmethod(invoke),
                                     "assert_one_line_error": staticmethod(assert_one_line_error)})
