"""SIGKILL the driver (``mpsearch run``) mid-search, ``mpsearch resume``, compare with a clean run;
SIGTERM it, and it stops cleanly.

The drivers connect to the session's Ray instance (``--address``), so the test pays for Ray once.
A killed driver's workers die with it; its trials in flight stay ``running`` until ``resume``
takes the study's lease (at once: the holder's process is gone), marks them failed and runs their
candidates again. With a fixed seed and a deterministic objective (a tiny Llama on CPU) the
resumed study finds the same best configuration as one that was never interrupted.

A SIGTERMed driver (SQLite, then PostgreSQL) flushes what it buffered, marks the trials in
flight interrupted, releases the lease, prints one line naming the resume command and exits 143;
the resume runs exactly the missing evaluations, every interrupted trial dispatched again.
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

from mpsearch.cluster.job import run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.storage import COMPLETE, TrialStore

EVALUATIONS = 36


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


def cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "mpsearch.cluster.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def completed(store, study):
    try:
        return store.counts(study).get(COMPLETE, 0)
    except Exception:
        return 0


def resume_exactly(store, study, url, address):
    """``mpsearch resume`` ends the study with exactly its evaluations, none twice, every
    interrupted trial dispatched again; returns the completed trials."""
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
    return complete


@pytest.mark.slow
def test_sigkill_then_resume(ray_session, tiny_llama_path, tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    address = ray_session.get_runtime_context().gcs_address
    store = TrialStore(url)
    run_job(parse_spec(spec_fields(tiny_llama_path, "clean", url)), store)

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_fields(tiny_llama_path, "killed", url)))
    driver = cli("run", str(spec), "--address", address)
    deadline = time.time() + 240
    while completed(store, "killed") < EVALUATIONS // 3:
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.time() < deadline, "the driver made no progress"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert completed(store, "killed") < EVALUATIONS

    complete = resume_exactly(store, "killed", url, address)
    assert store.best("killed", top=1)[0].choices == store.best("clean", top=1)[0].choices
    assert {t.choices for t in complete} == {t.choices for t in store.trials("clean", COMPLETE)}
    assert store.study("killed").status == "finished"


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

    resume_exactly(store, study, url, address)


SECOND_SIGNAL = textwrap.dedent("""
    import os, signal, time
    from mpsearch.cluster import signals
    with signals.handling() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except signals.StopRequested:
            print("first", stop.reason(), stop.exit_code, flush=True)
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
    assert res.stdout == "first SIGINT 130\n"
    assert res.stderr == "error: SIGINT again: exiting at once (resume continues the study)\n"
