"""The result commands (best, pareto, compare, trials, export, apply, report) on constructed
studies, and their bad input: one-line errors, non-zero exit, the database unchanged."""

import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mpsearch.cluster.cli import app
from mpsearch.spaces import Budget, Candidate, Gene, LayerInfo, SearchSpace, parse_option
from mpsearch.spaces.errors import MpsearchError
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.storage import CalibrationRecord, TrialStore
from mpsearch.workers.checkpoint import scoring_setup
from mpsearch.workers.config import ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import Worker

OPTS = tuple(parse_option(o) for o in ("int2-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16"))
SPACE = SearchSpace((Gene("a", (LayerInfo("a", 128, 64),), OPTS),
                     Gene("b", (LayerInfo("b", 128, 64),), OPTS)))
# (choices, objective, origin); avg bits = mean of the two options' bits; budget 6.25
TRIALS = [((1, 1), 0.30, "uniform"), ((0, 2), 0.10, "random"), ((3, 3), 0.0, "uniform"),
          ((0, 0), None, "random"), ((1, 0), 0.20, "random"), ((2, 1), 0.10, "random")]


def record(store, name, space, spec, trials, model="m", objective="kl"):
    study, _ = store.open_study(name, spec, spec, space, model, objective, 10,
                                budget=Budget(spec["budget"]["avg_bits"]),
                                calibration=CalibrationRecord(**spec["calibration"]))
    for choices, value, origin in trials:
        candidate = Candidate(tuple(choices), origin=origin)
        cost = space.cost(candidate)
        feasible = cost.avg_bits <= spec["budget"]["avg_bits"] + 1e-9
        n = store.start_trial(study.id, candidate, cost.avg_bits, cost.total_bytes, feasible, 0)
        store.finish_trial(study.id, n, value, "w0", None if value is not None else "boom", 0.1)
    return study


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = TrialStore(url)
    spec = {"budget": {"avg_bits": 6.25}, "calibration": {"samples": 4}}
    record(store, "s", SPACE, spec, TRIALS)
    record(store, "t", SPACE, spec, [((1, 2), 0.05, "random"), ((0, 1), 0.4, "random")])
    store.close()
    return url


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_best_and_pareto_json(db):
    best = json.loads(ok("best", "--study", "s", "--db", db, "--json").stdout)
    assert [b["trial"] for b in best] == [1, 5, 4, 0]
    front = json.loads(ok("pareto", "--study", "s", "--db", db, "--json").stdout)
    assert [(p["trial"], p["feasible"]) for p in front] == [(4, True), (1, True), (2, False)]
    assert front[0]["layers"] == {"a": "int4-g128-asym", "b": "int2-g128-asym"}
    feasible = json.loads(ok("pareto", "--study", "s", "--db", db, "--json",
                             "--feasible-only").stdout)
    assert [p["trial"] for p in feasible] == [4, 1]
    table = ok("pareto", "--study", "s", "--db", db).stdout
    assert "Pareto front" in table and "over" in table


def test_compare_side_by_side(db):
    data = json.loads(ok("compare", "--study", "s", "--study", "t", "--db", db, "--json").stdout)
    assert data["budget"]["avg_bits"] == 6.25
    assert [(s["study"], s["completed"], s["within_budget"], [b["trial"] for b in s["best"]])
            for s in data["studies"]] == [("s", 5, 4, [1]), ("t", 2, 2, [0])]
    table = ok("compare", "--study", "s", "--study", "t", "--db", db, "--max-bits", "4.25").stdout
    assert "studies compared at avg_bits <= 4.25" in table


def test_export_default_is_the_best_trial(db, tmp_path):
    ok("export", "--study", "s", "--db", db, "--out", tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["provenance"]["trial"] == 1 and plan["provenance"]["objective"] == 0.10
    assert [ly["label"] for ly in plan["layers"]] == ["int2-g128-asym", "int8-g128-asym"]
    ok("export", "--study", "s", "--db", db, "--trial", 2, "--out", tmp_path / "p2.json")
    plan = json.loads((tmp_path / "p2.json").read_text())
    assert plan["provenance"]["feasible"] is False  # asked for by number: exported, flagged


def test_report_and_trials_write_files(db, tmp_path):
    ok("report", "--study", "s", "--db", db, "--out", tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().count('class="plotly-graph-div"') == 3
    ok("trials", "--study", "s", "--db", db, "--out", tmp_path / "t.parquet")
    assert (tmp_path / "t.parquet").stat().st_size > 0


def dump(url: str) -> list[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return list(conn.iterdump())


@pytest.mark.parametrize("args, match", [
    (("best", "--study", "nope"), "no study 'nope'"),
    (("pareto", "--study", "nope"), "no study 'nope'"),
    (("compare", "--study", "s", "--study", "nope"), "no study 'nope'"),
    (("compare", "--study", "s"), "at least two studies"),
    (("report", "--study", "nope", "--out", "{tmp}/r.html"), "no study 'nope'"),
    (("export", "--study", "s", "--trial", 99, "--out", "{tmp}/p.json"), "no trial 99"),
    (("export", "--study", "s", "--trial", 3, "--out", "{tmp}/p.json"), "is failed, not complete"),
    (("best", "--study", "s", "--max-bits", 1), "no completed feasible trial within avg_bits <= 1"),
    (("pareto", "--study", "s", "--max-bytes", 10), "no completed trial within"),
    (("compare", "--study", "s", "--study", "t", "--max-bits", 1), "no study has a completed"),
    (("trials", "--study", "s", "--out", "{tmp}/no/dir/t.parquet"), "cannot write"),
    (("export", "--study", "s", "--out", "{tmp}/no/dir/p.json"), "cannot write plan"),
    (("report", "--study", "s", "--out", "{tmp}/no/dir/r.html"), "cannot write report"),
    (("apply", "{tmp}/missing.json", "--out", "{tmp}/ckpt"), "cannot read plan"),
    (("export", "--study", "s", "--format", "onnx", "--out", "{tmp}/m"), "is not one of plan"),
    (("export", "--study", "s", "--trial", 2, "--format", "compressed-tensors", "--out",
      "{tmp}/ct"), "over the budget (infeasible)"),
    (("export", "--study", "s", "--trial", 3, "--format", "compressed-tensors", "--out",
      "{tmp}/ct"), "is failed, not complete"),
])
def test_bad_input_is_one_line_error_and_leaves_the_database(db, tmp_path, args, match):
    before = dump(db)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke(*args, *(["--db", db] if args[0] != "apply" else []))
    assert result.exit_code != 0
    assert isinstance(result.exception, MpsearchError), result.exception
    message = str(result.exception)
    assert match in message and "\n" not in message
    assert dump(db) == before


def test_report_without_plotly_is_one_line(db, tmp_path, monkeypatch):
    """A partial install (a GPU machine's bundle without plotly): refused in one line, no file."""
    for name in [m for m in sys.modules if m == "plotly" or m.startswith(("plotly.",
                                                                          "mpsearch.storage.report"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly raises ImportError
    before = dump(db)
    result = invoke("report", "--study", "s", "--db", db, "--out", tmp_path / "r.html")
    assert result.exit_code != 0 and isinstance(result.exception, MpsearchError)
    assert str(result.exception) == ("mpsearch report draws with the package 'plotly', which is "
                                     "not installed: pip install plotly")
    assert not (tmp_path / "r.html").exists() and dump(db) == before


def test_missing_store_and_main_prints_one_line(tmp_path):
    missing = tmp_path / "none.db"
    proc = subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", "pareto", "--study", "s",
                           "--db", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no mpsearch store"), proc.stderr
    assert not missing.exists()  # reading never creates a store


def tiny_study(model_path, tmp_path, labels, kl_top_k=None) -> tuple[str, float]:
    """A store with one study of one trial a worker scored (each option in turn): (url, value).
    ``kl_top_k``: the study's KL on the reference's top-k tokens."""
    info = inspect_model(ModelConfig(name=model_path))
    options = tuple(parse_option(o) for o in labels)
    space = build_space(info.layers, [LayerRule(r"layers\.\d+\.", options)],
                        total_params=info.total_params, unsearched_bits=32)  # float32, as scored
    calibration = {"source": "stdlib-docs", "samples": 4, "seq_len": 16, "batch_size": 4}
    setup = replace(scoring_setup(model_path, "auto", "kl", calibration), kl_top_k=kl_top_k)
    worker = Worker(setup, space)
    choices = tuple(i % len(options) for i in range(len(space.genes)))
    value = worker.evaluate(Candidate(choices)).objective
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    spec = {"model": {"name": model_path, "kind": "auto", "dtype": "float32"},
            "calibration": calibration, "budget": {"avg_bits": 16},
            **({"kl_top_k": kl_top_k} if kl_top_k else {})}
    store = TrialStore(url)
    record(store, "tiny", space, spec, [(choices, value, "random")], model=info.path)
    store.close()
    return url, value


def assert_sizes_agree(stderr: str) -> None:
    """--verify's "on disk N bytes; cost model M bytes": within 2 %."""
    match = re.search(r"on disk (\d+) bytes; cost model (\d+) bytes", " ".join(stderr.split()))
    assert match, stderr
    assert int(match[1]) == pytest.approx(int(match[2]), rel=0.02)


@pytest.mark.slow
def test_export_apply_verify_on_a_tiny_llama(tiny_llama_path, tmp_path):
    """A trial scored by a worker → export → apply --verify reproduces its objective."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, value = tiny_study(tiny_llama_path, tmp_path, ("int2-g32-asym", "int4-g32-sym", "fp16"))
    ok("export", "--study", "tiny", "--db", url, "--out", tmp_path / "plan.json")
    result = ok("apply", tmp_path / "plan.json", "--out", tmp_path / "ckpt", "--verify")
    assert f"re-scored {value:.6g}; stored {value:.6g}" in result.stderr
    AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "mpsearch_plan.json").is_file()
    again = invoke("apply", tmp_path / "plan.json", "--out", tmp_path / "ckpt")
    assert "not an empty directory" in str(again.exception)

    # packed: the same trial as compressed-tensors, straight from the store and from the plan
    packed = ok("export", "--study", "tiny", "--db", url, "--format", "compressed-tensors",
                "--out", tmp_path / "ct", "--verify")
    assert f"re-scored {value:.6g}; stored {value:.6g}; on disk " in packed.stderr
    assert_sizes_agree(packed.stderr)
    assert "quantization_config" in (tmp_path / "ct" / "config.json").read_text()
    ok("apply", tmp_path / "plan.json", "--format", "compressed-tensors", "--out", tmp_path / "ct2")
    assert (tmp_path / "ct2" / "mpsearch_plan.json").is_file()
    refused = invoke("export", "--study", "tiny", "--db", url, "--format", "gguf", "--out",
                     tmp_path / "m.gguf")  # int2-g32-asym has no exact GGUF type
    assert "cannot be exported to GGUF" in str(refused.exception)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
def test_verify_scores_a_top_k_kl_study_on_its_top_k(tiny_llama_path, tmp_path):
    """A study of KL on the reference's top 8 tokens: the plan records k, and --verify re-scores
    with it (the whole vocabulary's KL is another, larger number)."""
    labels = ("int2-g32-asym", "int4-g32-sym-clip-gptq", "fp16")
    (tmp_path / "top8").mkdir()
    (tmp_path / "all").mkdir()
    url, value = tiny_study(tiny_llama_path, tmp_path / "top8", labels, kl_top_k=8)
    _, full = tiny_study(tiny_llama_path, tmp_path / "all", labels)
    assert value < 0.9 * full, (value, full)
    ok("export", "--study", "tiny", "--db", url, "--out", tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["provenance"]["kl_top_k"] == 8
    result = ok("apply", tmp_path / "plan.json", "--out", tmp_path / "ckpt", "--verify")
    assert f"re-scored {value:.6g}; stored {value:.6g}" in result.stderr


@pytest.mark.slow
def test_export_gguf_verify_on_a_tiny_llama(tiny_llama_path, tmp_path):
    """A trial of GGUF block formats → export --format gguf --verify reproduces its objective."""
    url, value = tiny_study(tiny_llama_path, tmp_path, ("q4_0", "q8_0", "int4-g32-sym", "fp16"))
    result = ok("export", "--study", "tiny", "--db", url, "--format", "gguf",
                "--out", tmp_path / "tiny.gguf", "--verify")
    assert f"re-scored {value:.6g}; stored {value:.6g}; on disk " in result.stderr
    assert_sizes_agree(result.stderr)
    assert (tmp_path / "tiny.gguf").stat().st_size > 0


# Libraries a command that only reads the store has no use for (each costs 0.1-2 s to import).
HEAVY = ("torch", "ray", "transformers", "optuna", "plotly", "pyarrow")
_RUN_AND_LIST_IMPORTS = """
import json, sys
from mpsearch.cluster.cli import app
try:
    app(sys.argv[2:])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = [m for m in json.loads(sys.argv[1]) if m in sys.modules]
print("\\nimported:", json.dumps(heavy))
"""


@pytest.mark.parametrize("args, shows", [
    (("--help",), "pareto"),
    (("best", "--study", "s"), "int2-g128-asym"),
    (("status",), "5/10"),
    (("pareto", "--study", "s", "--json"), "int2-g128-asym"),
])
def test_read_only_commands_import_no_heavy_library(db, tmp_path, args, shows):
    # No --db: the default ./mpsearch.db, here a copy of the constructed store.
    (tmp_path / "mpsearch.db").write_bytes((tmp_path / "r.db").read_bytes())
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_IMPORTS, json.dumps(HEAVY), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert shows in proc.stdout  # it did its work (read the study)
    assert proc.stdout.rsplit("imported:", 1)[1].strip() == "[]"
