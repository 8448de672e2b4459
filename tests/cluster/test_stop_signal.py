"""SIGTERM (or Ctrl-C) stops ``mpsearch run`` cleanly, and ``mpsearch resume`` finishes the study.

The driver connects to the session's Ray instance (``--address``). Stopped mid-search it flushes
what it buffered, marks the trials in flight interrupted, releases the lease, prints one line
naming the resume command and exits 143; the resume then runs exactly the missing evaluations:
the study ends with its count of completed trials, no configuration twice, and every interrupted
trial dispatched again (``retry_of``). On SQLite and PostgreSQL.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
import yaml

from mpsearch.storage import COMPLETE, TrialStore

EVALUATIONS = 30


def spec_fields(model, study, url):
    return {
        "study": study, "model": {"name": model},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.", "options": [
            "int2-g32-asym", "int3-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]}]},
        "budget": {"avg_bits": 4.5},
        "searcher": {"name": "evolutionary", "params": {"offspring": 6}},
        "evaluations": EVALUATIONS, "workers": {"count": 2, "cpus": 1},
        "storage": {"url": url}, "seed": 3,
    }


def cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "mpsearch.cluster.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def completed(store, study):
    try:
        return store.counts(study).get(COMPLETE, 0)
    except Exception:
        return 0


@pytest.mark.slow
def test_sigterm_stops_cleanly_then_resume_finishes(store_url, ray_session, tiny_llama_path,
                                                    tmp_path):
    url = store_url  # a SQLite file, then the PostgreSQL server
    address = ray_session.get_runtime_context().gcs_address
    study = "stopped"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_fields(tiny_llama_path, study, url)))
    driver = cli("run", str(spec), "--address", address)
    store = TrialStore(url)
    deadline = time.time() + 240
    while completed(store, study) < EVALUATIONS // 3:
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.time() < deadline, "the driver made no progress"
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM: study " + study), last
    assert f"mpsearch resume --study {study} --db" in last
    trials = store.trials(study)
    assert not [t for t in trials if t.status == "running"]  # in flight: marked, not left
    interrupted = [t for t in trials if t.interrupted]
    assert interrupted and all("interrupted (SIGTERM)" in t.error for t in interrupted)
    assert f"{len(interrupted)} trials in flight marked interrupted" in last
    assert store.study(study).status == "stopped"
    assert completed(store, study) < EVALUATIONS

    resumed = cli("resume", "--study", study, "--db", url, "--address", address)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    trials = store.trials(study)
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == EVALUATIONS
    assert max(Counter(t.choices for t in complete).values()) == 1
    assert all(t.status == COMPLETE or t.interrupted for t in trials)
    assert {t.retry_of for t in trials if t.retry_of is not None} == \
        {t.number for t in trials if t.interrupted}
    assert store.study(study).status == "finished"


SECOND_SIGNAL = textwrap.dedent("""
    import os, signal, time
    from mpsearch.cluster import signals
    with signals.handling():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except signals.StopRequested as stop:
            print("first", stop.exit_code, flush=True)
            os.kill(os.getpid(), signal.SIGINT)  # during the cleanup
            time.sleep(30)
            print("cleanup went on", flush=True)
""")


def test_a_second_signal_exits_at_once():
    start = time.time()
    res = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True,
                         timeout=60)
    assert time.time() - start < 20
    assert res.returncode == 130, res
    assert res.stdout == "first 130\n"
    assert res.stderr == "error: SIGINT again: exiting at once (resume continues the study)\n"
