"""``mpsearch submit`` through the Ray Jobs API to a ``ray start --head`` cluster of the test's own.

The cluster runs with token authentication (its own token, in a file named by
``RAY_AUTH_TOKEN_PATH``), its own temp dir and free ports, so it meets neither the session's Ray
instance nor anyone else's; it is stopped by ending its ``--block`` process. The spec names its
database as ``env:MPSEARCH_JOB_DB``, set only in the cluster's environment. Also: a wrong token and
an unreachable dashboard are one-line errors with a non-zero exit.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from mpsearch.storage import COMPLETE, TrialStore

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head(pg_url):
    """A one-node Ray cluster with token auth; yields (dashboard URL, token file)."""
    root = tempfile.mkdtemp(prefix="mpj-", dir="/tmp")  # short: Ray's socket paths are capped
    token = os.path.join(root, "token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    gcs, dash, agent, agent_grpc, metrics, client, rt_env = free_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token,
           "MPSEARCH_JOB_DB": pg_url}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--temp-dir={root}/ray", f"--port={gcs}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
         f"--runtime-env-agent-port={rt_env}", "--min-worker-port=0", "--max-worker-port=0",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        with open(token) as f:
            headers = {"Authorization": f"Bearer {f.read().strip()}"}
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, "ray start --head exited"
            try:
                JobSubmissionClient(address, headers=headers).list_jobs()
                break
            except Exception:
                assert time.time() < deadline, "the dashboard did not come up"
                time.sleep(1)
        yield address, token
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: ray start stops what it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def mpsearch(*args, token_path=None, token=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MPSEARCH_JOB_DB"):
        env.pop(key, None)
    if token_path:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_runs_the_search_on_the_cluster(head, tiny_llama_path, pg_url, tmp_path):
    address, token = head
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "study": "submitted", "model": {"name": tiny_llama_path},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.", "options": [
            "int2-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]}]},
        "budget": {"avg_bits": 4.5}, "searcher": {"params": {"offspring": 4}},
        "evaluations": 12, "workers": {"count": 1, "cpus": 1},
        "storage": {"url": "env:MPSEARCH_JOB_DB"}}))

    wrong = mpsearch("submit", str(spec), "--address", address, token=secrets.token_hex(32))
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: ")
    assert len(wrong.stderr.strip().splitlines()) == 1

    done = mpsearch("submit", str(spec), "--address", address, "--wait", token_path=token)
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = done.stdout.strip().splitlines()[0]
    assert job_id.startswith("mpsearch-submitted-")
    store = TrialStore(pg_url, create=False)
    assert store.counts("submitted").get(COMPLETE) == 12
    assert store.study("submitted").status == "finished"


def test_unreachable_dashboard_and_relative_sqlite_are_one_line(tmp_path):
    (port,) = free_ports(1)
    spec = tmp_path / "job.yaml"
    fields = {"study": "s", "budget": {"avg_bits": 4.25}, "storage": {"url": "env:MPSEARCH_DB"}}
    spec.write_text(yaml.safe_dump(fields))
    res = mpsearch("submit", str(spec), "--address", f"http://127.0.0.1:{port}", timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot reach the Ray dashboard at http://127.0.0.1:")
    assert len(res.stderr.strip().splitlines()) == 1

    spec.write_text(yaml.safe_dump({**fields, "storage": {"url": "sqlite:///local.db"}}))
    res = mpsearch("submit", str(spec), "--address", f"http://127.0.0.1:{port}", timeout=120)
    assert res.returncode == 1 and "relative SQLite path" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
