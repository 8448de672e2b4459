"""The progress display of ``mpsearch run`` says what it is doing before the first result
arrives: preparing the job, then each setup phase of the workers, then the search bar."""

import io
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

import mpsearch.cluster.cli.run as cli_run
import mpsearch.cluster.job as job


class Stop(Exception):
    pass


def wait_for(buffer: io.StringIO, text: str, timeout: float = 10.0) -> str:
    """The console's output once it shows ``text`` (the display redraws ten times a second)."""
    deadline = time.monotonic() + timeout
    while text not in buffer.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    return buffer.getvalue()


def test_display_shows_each_setup_phase_until_the_first_result(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(cli_run, "err", Console(file=buffer, force_terminal=True, width=200))
    seen = {}

    def fake_run_job(spec, store, address, on_start, on_result, on_phase, **_options):
        seen["preparing"] = "preparing the job" in wait_for(buffer, "preparing the job")
        on_phase.phase("model", "loading the model", 2)  # as the workers' setup reports it
        seen["setup"] = "loading the model" in wait_for(buffer, "loading the model")
        on_start(SimpleNamespace(name=spec.study, evaluations=spec.evaluations), 0)
        on_result(SimpleNamespace(completed=1, best=0.5), SimpleNamespace(origin="random"), None)
        seen["searching"] = "1/10" in wait_for(buffer, "1/10")
        raise Stop

    monkeypatch.setattr(job, "run_job", fake_run_job)
    spec = SimpleNamespace(study="s", evaluations=10)
    with pytest.raises(Stop):
        cli_run.run_with_progress(spec, store=None, address=None, top=1)
    assert seen == {"preparing": True, "setup": True, "searching": True}
