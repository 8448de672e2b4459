"""The ``mpsearch`` CLI end to end on a tiny causal LM: run, best while running, trials, bad input."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow

EVALUATIONS = 150


def cli(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def write_spec(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.fixture
def spec_fields(tiny_llama_path, tmp_path):
    return {
        "study": "tiny",
        "model": {"name": tiny_llama_path},
        "calibration": {"samples": 8, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.",
                              "options": ["int2-g32-asym", "int3-g32-asym", "int4-g32-asym",
                                          "int8-g32-asym", "fp16"]}]},
        "budget": {"avg_bits": 4.5},
        "searcher": {"name": "evolutionary", "params": {"offspring": 8}},
        # enough that a second process's `best` (a Python start each) answers while it runs on
        # a loaded 2-core machine: 60 once finished between two calls there
        "evaluations": EVALUATIONS,
        "workers": {"count": 2, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / 'study.db'}"},
        "seed": 0,
    }


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_run_best_and_trials_end_to_end(spec_fields, tmp_path, ray_session):
    spec = write_spec(tmp_path / "job.yaml", **spec_fields)
    db = spec_fields["storage"]["url"]
    proc = subprocess.Popen([sys.executable, "-m", "mpsearch.cluster.cli", "run", str(spec)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # While the search runs, a second process reads consistent results.
    seen_while_running = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        r = cli("best", "--study", "tiny", "--db", db, "--json", "--top", "3", cwd=tmp_path)
        if r.returncode == 0:
            rows = json.loads(r.stdout)
            objectives = [row["objective"] for row in rows]
            assert objectives == sorted(objectives)
            assert all(row["avg_bits"] <= 4.5 + 1e-9 for row in rows)
            seen_while_running = rows
            if proc.poll() is None:
                break
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert seen_while_running is not None, "best never answered while the run was going"
    assert f"{EVALUATIONS} completed" in stderr
    assert "uniform" in stdout and "int4-g32-asym" in stdout and "rank" in stdout

    best = json.loads(cli("best", "--study", "tiny", "--db", db, "--json", cwd=tmp_path).stdout)
    assert len(best) == 5 and best[0]["avg_bits"] <= 4.5 + 1e-9
    assert len(best[0]["layers"]) == 14  # 2 blocks × (q, k, v, o, gate, up, down)
    assert best[0]["extra"]["perplexity"] > 1  # stored beside the KL objective
    out = tmp_path / "trials.parquet"
    r = cli("trials", "--study", "tiny", "--db", db, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out)
    assert table.num_rows == EVALUATIONS
    assert set(table.column("status").to_pylist()) == {"complete"}
    assert "model.layers.0.self_attn.q_proj" in table.column_names

    # Rerunning the same spec finds the study complete; a changed spec is refused. (On the
    # session's Ray instance: `run` starts its workers before it opens the study, and a new
    # local instance each would cost ~8 s; the run above started its own.)
    address = ray_session.get_runtime_context().gcs_address
    r = cli("run", str(spec), "--address", address, cwd=tmp_path)
    assert r.returncode == 0 and f"{EVALUATIONS} completed" in r.stderr
    changed = write_spec(tmp_path / "changed.yaml", **{**spec_fields, "seed": 1})
    line = one_line_error(cli("run", str(changed), "--address", address, cwd=tmp_path))
    assert "study 'tiny' already exists" in line and "different spec" in line


@pytest.mark.parametrize("edit,expected", [
    ({"modle": {"name": "minilm"}}, "field 'modle': unknown field"),
    ({"evaluations": "many"}, "field 'evaluations': Input should be a valid integer"),
    ({"budget": {"avg_bits": 4.25, "avg": 3}}, "field 'budget.avg': unknown field"),
    ({"space": {"layers": [{"match": r"decoder\.block", "options": ["int4-g32-asym"]}]}},
     r"pattern 'decoder\.block' matches no quantizable layer"),
    ({"budget": {"avg_bits": 1.5}}, "below the cheapest configuration of the space (avg_bits 3.0000"),
    ({"model": {"name": "/no/such/model"}}, "model '/no/such/model': no such model directory"),
    ({"storage": {"url": "postgresql+psycopg://mp:s3cret@127.0.0.1:1/db"}},
     "database postgresql+psycopg://mp:***@127.0.0.1:1/db: cannot connect"),
    ({"searcher": {"name": "annealing"}}, "unknown strategy 'annealing'; valid:"),
])
def test_bad_input_is_one_line_and_exit_1(spec_fields, tmp_path, edit, expected, ray_session):
    spec = write_spec(tmp_path / "bad.yaml", **{**spec_fields, **edit})
    # `run` starts its workers once the spec is read and the model found (cluster/prestart.py):
    # on the session's Ray instance, not a new local one per case (~10 s each)
    address = ray_session.get_runtime_context().gcs_address
    line = one_line_error(cli("run", str(spec), "--address", address, cwd=tmp_path))
    assert expected in line
    assert "s3cret" not in line


@pytest.mark.parametrize("edit,expected", [
    ({"model": {"name": "someone/x"}},
     "model 'someone/x' is not a local directory nor in the Hugging Face cache"),
    ({"calibration": {"source": "hub:someone/ds"}},
     "calibration.source: 'hub:someone/ds' is not in the datasets cache"),
])
def test_a_download_without_a_reachable_hub_is_one_line_at_once(spec_fields, tmp_path, edit,
                                                                  expected, ray_session):
    """Online mode on a machine that cannot reach the hub: one line, not the hub client's five
    retries (about 25 s of warnings) in the driver and again in each worker."""
    spec = write_spec(tmp_path / "hub.yaml", **{**spec_fields, **edit})
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "RAY_ADDRESS")
               and "proxy" not in k.lower()}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}",
                   HF_HUB_CACHE=str(tmp_path / "hub"), HF_DATASETS_CACHE=str(tmp_path / "ds"))
        address = ray_session.get_runtime_context().gcs_address  # not a new local one (~10 s)
        result = subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", "run", str(spec),
                                 "--address", address], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, env=env)
    line = one_line_error(result)
    assert expected in line and "cannot be reached (Connection refused)" in line
    assert not (tmp_path / "study.db").exists()  # nothing stored


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: x\nbudget: {avg_bits: 4\n")
    assert "bad.yaml" in one_line_error(cli("run", str(bad), cwd=tmp_path))
    assert "cannot read job spec" in one_line_error(cli("run", "missing.yaml", cwd=tmp_path))
