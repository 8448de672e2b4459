"""Fault tolerance on a 2-node local Ray cluster: a worker killed, a node removed, mid-search.

Each scenario runs in its own process (``multinode_scenario.py``) with its own Ray temp dir, so it
neither meets the session's shared Ray instance nor another user's. The study must end with
exactly the requested completed trials, none left running, and no candidate evaluated twice.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from mpsearch.storage import COMPLETE, TrialStore

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("multinode_scenario.py")


@pytest.mark.parametrize("scenario", ["kill-actor", "remove-node"])
def test_study_survives(scenario, tmp_path):
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    ray_tmp = tempfile.mkdtemp(prefix="mps-", dir="/tmp")  # short: Ray's socket paths are capped
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, str(SCRIPT), scenario, url, "30"], env=env,
                         capture_output=True, text=True, timeout=300)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    assert len(seen["nodes_at_start"]) == 2  # SPREAD placed workers on both nodes
    assert seen["replaced"] >= 1 and seen["redispatched"] >= 1
    store = TrialStore(url)
    trials = store.trials(scenario)
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == 30 == seen["completed"]
    assert not [t for t in trials if t.status != COMPLETE]  # re-dispatch is not a new trial
    assert max(Counter(t.choices for t in complete).values()) == 1
    assert [t.number for t in trials] == list(range(len(trials)))
