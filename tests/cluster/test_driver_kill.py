"""SIGKILL the driver (``mpsearch run``) mid-search, ``mpsearch resume``, compare with a clean run.

The drivers connect to the session's Ray instance (``--address``), so the test pays for Ray once.
A killed driver's workers die with it; its trials in flight stay ``running`` until ``resume``
takes the study's lease (at once: the holder's process is gone), marks them failed and runs their
candidates again. With a fixed seed and a deterministic objective (a tiny Llama on CPU) the
resumed study finds the same best configuration as one that was never interrupted.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from mpsearch.cluster.job import run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.storage import COMPLETE, TrialStore

pytestmark = pytest.mark.slow

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

    resumed = cli("resume", "--study", "killed", "--db", url, "--address", address)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]

    trials = store.trials("killed")
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == EVALUATIONS
    assert max(Counter(t.choices for t in complete).values()) == 1
    assert all(t.status == COMPLETE or t.interrupted for t in trials)
    assert {t.retry_of for t in trials if t.retry_of is not None} == \
        {t.number for t in trials if t.interrupted}
    assert store.best("killed", top=1)[0].choices == store.best("clean", top=1)[0].choices
    assert {t.choices for t in complete} == {t.choices for t in store.trials("clean", COMPLETE)}
    assert store.study("killed").status == "finished"
