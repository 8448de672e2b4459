"""Fuzzing the spec parser and every CLI command's arguments: success or one line, never a traceback.

Hypothesis generates YAML job specs (the real fields with hostile values: huge and non-finite
numbers, wrong types, odd unicode, bad regexes and option labels, code-like objectives, unusable
URLs; and raw bytes) and argument lists for every ``mpsearch`` command (its real options with
random values, unknown options, missing values). Each input runs through the real entry point,
in-process (``cluster.cli.main``). It must end with exit 0, or a non-zero exit and exactly one
line on stderr; an exception escaping ``main`` (a traceback) fails the test, shrunk to the input.

What is not fuzzed here: the search itself. A spec that passes every check reaches the driver,
which the harness replaces by a sentinel that exits 0 (counted as "reached the driver"); the same
for ``profile``'s measuring and the Jobs API client. ``--verify`` and ``--wait`` are left out
(they start processes and wait on a cluster; their own tests cover them). The figures (examples,
distinct errors, tracebacks) are printed at the end of each test (``pytest -s``).

``MPSEARCH_FUZZ_EXAMPLES`` sets the examples per test (CI: the default, 60, bounded; a
derandomized run, so CI sees the same inputs each time). 1,500 per test ran clean here.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("MPSEARCH_FUZZ_EXAMPLES", "60"))  # per test; about 40 s for both
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


class ReachedTheDriver(SystemExit):
    """Raised instead of running a search: the input passed every check (exit 0)."""


def reached_the_driver(*_args, **_kwargs):
    raise ReachedTheDriver(0)


class Figures:
    """Outcomes of one fuzz test: successes, each distinct one-line error, tracebacks."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.tmp = name, str(tmp)
        self.examples, self.successes = 0, 0
        self.errors: Counter[str] = Counter()

    def record(self, res) -> None:
        self.examples += 1
        if res.code == 0:
            self.successes += 1
            return
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (res.code, res.stderr)
        self.errors[lines[0].replace(self.tmp, "<tmp>")] += 1

    def kinds(self) -> int:
        """Distinct errors once quoted values and numbers are blanked out."""
        return len({re.sub(r"\d+(\.\d+)?", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", e))
                    for e in self.errors})

    def report(self) -> str:
        return (f"fuzz {self.name}: {self.examples} examples, {self.successes} succeeded, "
                f"{len(self.errors)} distinct error messages ({self.kinds()} kinds), "
                "0 tracebacks")


@pytest.fixture
def harness(monkeypatch, tmp_path):
    """Inputs run in ``tmp_path``; the search, profiling and job submission are sentinels."""
    import mpsearch.cluster.job as job
    from mpsearch.cluster import profiling, submit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job, "run_job", reached_the_driver)
    monkeypatch.setattr(profiling, "ray_measure", reached_the_driver)
    monkeypatch.setattr(submit, "job_client", reached_the_driver)
    return tmp_path


# -- specs ------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(), st.integers(-3, 300), st.floats(), st.sampled_from(
    [0, -1, 1, 2, 4.25, 1e309, -1e309, float("nan"), 2**63, 10**30, "1e309", ".inf", "4"]))
TEXT = st.text(max_size=12)
JUNK = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner,
                                                                                max_size=3),
                    max_leaves=6)
OPTIONS = st.sampled_from(["int4-g32-asym", "int8-ch-sym", "fp16", "nvfp4", "int3-g64-sym-gptq",
                           "int4-g128-asym+2:4", "int99-g0-sym", "fp8_e4m3", "q4_0", "", "x"])
PATTERNS = st.one_of(st.sampled_from([r"layers\.\d+\.", r"^([\w.]+)+!$", "(", "[", r"\d{99999}",
                                      r"(?P<x>a)(?P<x>b)", "lm_head", r"layers\.(\d+)\.mlp",
                                      r"^([\w.]|[\w.]{2}|[\w.]{3})+(?<![jd])$"]), TEXT)


def value_or_junk(strategy):
    return st.one_of(strategy, strategy, strategy, JUNK)


def spec_fields(model: str):
    section = st.fixed_dictionaries
    return {
        "version": value_or_junk(st.sampled_from([1, 2])),
        "study": value_or_junk(st.sampled_from(["fz", "a.b-c_d", "", "../x", "é"])),
        "model": value_or_junk(section({}, optional={
            "name": value_or_junk(st.sampled_from([model, "minilm", "no/such/model", "./none",
                                                   "nul\x00model", "/"])),
            "kind": value_or_junk(st.sampled_from(["auto", "causal-lm", "encoder", "x"])),
            "dtype": value_or_junk(st.sampled_from(["float32", "bfloat16", "int8"])),
            "device": value_or_junk(st.sampled_from(["cpu", "cuda", "tpu"]))})),
        "calibration": value_or_junk(section({}, optional={
            "source": value_or_junk(st.sampled_from(["stdlib-docs", "calib.txt", "bad.txt",
                                                     "calib.jsonl", "missing.txt", "/",
                                                     "nul\x00.txt"])),
            "samples": value_or_junk(NUMBERS), "seq_len": value_or_junk(NUMBERS),
            "offset": value_or_junk(NUMBERS), "batch_size": value_or_junk(NUMBERS),
            "text_field": value_or_junk(TEXT)})),
        "space": value_or_junk(section({}, optional={
            "layers": value_or_junk(st.lists(section({"match": value_or_junk(PATTERNS)},
                                                     optional={"options": value_or_junk(
                                                         st.lists(OPTIONS, max_size=4))}),
                                             max_size=3)),
            "tie": value_or_junk(st.lists(PATTERNS, max_size=2)),
            "unsearched_bits": value_or_junk(NUMBERS)})),
        "budget": value_or_junk(section({}, optional={"avg_bits": value_or_junk(NUMBERS),
                                                      "total_bytes": value_or_junk(NUMBERS)})),
        "objective": value_or_junk(st.sampled_from(
            ["auto", "kl", "embedding_distortion", "os:system", "builtins:eval", "loss.py:mse",
             "loss.py:nope", "missing.py:f", "not-registered", "nul\x00.py:f", "/:f"])),
        "kl_top_k": value_or_junk(NUMBERS),
        "searcher": value_or_junk(section({}, optional={
            "name": value_or_junk(st.sampled_from(["evolutionary", "optuna", "random", "uniform",
                                                   "integer-program", "hybrid", "nope"])),
            "params": value_or_junk(st.dictionaries(st.sampled_from(
                ["offspring", "sampler", "population", "proxy", "solver", "x"]), JUNK,
                max_size=3)),
            "baselines": value_or_junk(st.booleans())})),
        "evaluations": value_or_junk(NUMBERS),
        "workers": value_or_junk(section({}, optional={
            "count": value_or_junk(NUMBERS), "cpus": value_or_junk(NUMBERS),
            "gpus": value_or_junk(NUMBERS), "depth": value_or_junk(NUMBERS),
            "cache_device_bytes": value_or_junk(NUMBERS)})),
        "storage": value_or_junk(section({}, optional={
            "url": value_or_junk(st.sampled_from(
                ["sqlite:///fz.db", "fz.db", "env:MPSEARCH_FUZZ_UNSET", "postgresql+pg8000://u:p@h/d",
                 "postgresql://u@127.0.0.1:1/x", "mysql://x", "sqlite:////no/such/dir/x.db",
                 "sqlite:///a\x00b", "::::"])),
            "retry_seconds": value_or_junk(NUMBERS)})),
        "seed": value_or_junk(NUMBERS),
        "unknown_field": JUNK,
    }


def valid_spec(model: str) -> dict:
    return {"study": "fz", "model": {"name": model}, "calibration": {"samples": 4, "seq_len": 16},
            "space": {"layers": [{"match": r"layers\.\d+\.", "options": ["int4-g32-asym",
                                                                           "fp16"]}]},
            "budget": {"avg_bits": 10}, "evaluations": 2, "storage": {"url": "sqlite:///fz.db"}}


def spec_documents(model: str):
    """Specs of random fields, and (half of them) a valid spec with one or two fields replaced,
    so that the later checks (model, space, budget, calibration, objective) are reached too."""
    fields = spec_fields(model)
    anything = st.fixed_dictionaries({}, optional=fields)
    replaced = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})).map(
        lambda over: {**valid_spec(model), **over})
    return st.one_of(anything, replaced, replaced)


def write_inputs(tmp: Path) -> None:
    (tmp / "calib.txt").write_text("one sample of text\n" * 40)
    (tmp / "calib.jsonl").write_text('{"text": "a sample"}\n' * 40)
    (tmp / "bad.txt").write_bytes(b"caf\xe9\n" * 40)
    (tmp / "loss.py").write_text("def mse(reference, output, batch):\n    return 0.0\n")


def spec_text(doc) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return repr(doc)


@given(data=st.data())
@FUZZ
def test_fuzz_spec_files_through_run(data, harness, tiny_llama_path, cli_inprocess):
    """``mpsearch run SPEC`` on generated specs, YAML and raw bytes alike."""
    write_inputs(harness)
    figures = getattr(test_fuzz_spec_files_through_run, "figures", None) or Figures(
        "run SPEC", harness)
    test_fuzz_spec_files_through_run.figures = figures
    raw = data.draw(st.one_of(
        spec_documents(tiny_llama_path).map(spec_text).map(str.encode),
        spec_documents(tiny_llama_path).map(spec_text).map(str.encode),
        st.binary(max_size=200), st.text(max_size=200).map(str.encode)), label="spec")
    path = harness / "spec.yaml"
    path.write_bytes(raw)
    figures.record(cli_inprocess.invoke("run", str(path)))


# -- every command's arguments -----------------------------------------------------------------
def commands():
    import typer.main

    from mpsearch.cluster.cli import app

    return typer.main.get_command(app).commands


VALUES = st.one_of(
    st.sampled_from(["fz", "nope", "0", "-1", "3", "1e309", "nan", "-inf", "4.25", "", " ",
                     "store.db", "sqlite:///store.db", "sqlite:///none.db", "spec.yaml",
                     "plan.json", "bad.txt", "out.parquet", "out.html", "out.json", "/",
                     "env:NOPE", "http://127.0.0.1:1", "127.0.0.1:1", "optuna", "evolutionary",
                     '{"offspring": 4}', "{", "compressed-tensors", "gguf", "x" * 300]),
    st.text(max_size=10).filter(lambda v: "\x00" not in v))  # no OS passes a NUL in argv


def argument_lists(name: str, command):
    options = [o for p in command.params if p.param_type_name == "option"
               for o in p.opts if o not in ("--verify", "--wait")]
    flags = {o for p in command.params if getattr(p, "is_flag", False) for o in p.opts}
    token = st.one_of(st.sampled_from(options or ["--x"]).flatmap(
        lambda o: st.just([o]) if o in flags else st.tuples(st.just(o), VALUES).map(list)),
        VALUES.map(lambda v: [v]), st.sampled_from(["--nope", "-x", "--", "--help"]).map(
            lambda v: [v]))
    anything = st.lists(token, max_size=6).map(lambda parts: [name, *(t for p in parts for t in p)])
    valid = VALID_ARGS.get(name, [name])
    near = st.tuples(st.integers(1, max(len(valid) - 1, 1)), VALUES, st.lists(token, max_size=1)).map(
        lambda change: [*valid[:change[0]], change[1], *valid[change[0] + 1:],
                        *(t for p in change[2] for t in p)])
    return st.one_of(anything, near, st.just(valid))


# A valid argument list of each command against the small store (near-valid ones change one item)
VALID_ARGS = {
    "run": ["run", "spec.yaml"], "profile": ["profile", "spec.yaml"],
    "levels": ["levels", "spec.yaml", "--show"],
    "submit": ["submit", "spec.yaml", "--address", "http://127.0.0.1:1"],
    "best": ["best", "--study", "fz", "--top", "2"], "status": ["status", "--study", "fz"],
    "pareto": ["pareto", "--study", "fz", "--json"],
    "compare": ["compare", "--study", "fz", "--study", "fz"],
    "trials": ["trials", "--study", "fz", "--out", "t.parquet"],
    "export": ["export", "--study", "fz", "--out", "plan.json"],
    "report": ["report", "--study", "fz", "--out", "r.html"],
    "resume": ["resume", "--study", "fz", "--extend", "1"],
    "apply": ["apply", "plan.json", "--out", "ckpt"],
    "import-optuna": ["import-optuna", "--study-name", "fz", "--storage", "sqlite:///fz-optuna.db",
                      "--spec", "spec.yaml"],
}


@pytest.fixture
def small_store(harness, tiny_llama_path):
    """A store with one finished study (so reading commands can succeed), its spec and plan."""
    from mpsearch.cluster.job import open_job_study, prepare
    from mpsearch.cluster.spec import parse_spec
    from mpsearch.storage import TrialStore

    fields = {"study": "fz", "model": {"name": tiny_llama_path},
              "calibration": {"samples": 4, "seq_len": 16},
              "space": {"layers": [{"match": r"layers\.\d+\.", "options": ["int4-g32-asym",
                                                                            "fp16"]}]},
              "budget": {"avg_bits": 10}, "evaluations": 2,
              "storage": {"url": "sqlite:///store.db"}}
    (harness / "spec.yaml").write_text(yaml.safe_dump(fields))
    job = prepare(parse_spec(fields))
    store = TrialStore("sqlite:///store.db")
    study = open_job_study(job, store)
    for choices, value in (((0,) * len(job.space.genes), 0.5), ((1,) * len(job.space.genes), 0.0)):
        from mpsearch.spaces import Candidate

        candidate = Candidate(choices)
        cost = job.space.cost(candidate)
        number = store.start_trial(study.id, candidate, cost.avg_bits, cost.total_bytes, True, 0)
        store.finish_trial(study.id, number, value, "w0", None, 0.1)
    store.set_study_status(study.id, "finished")
    write_inputs(harness)
    return harness


@given(data=st.data())
@FUZZ
def test_fuzz_every_command_s_arguments(data, small_store, cli_inprocess):
    figures = getattr(test_fuzz_every_command_s_arguments, "figures", None) or Figures(
        "command arguments", small_store)
    test_fuzz_every_command_s_arguments.figures = figures
    table = commands()
    name = data.draw(st.sampled_from(sorted(table)), label="command")
    argv = data.draw(argument_lists(name, table[name]), label="argv")
    figures.record(cli_inprocess.invoke(*argv, env={"MPSEARCH_DB": "sqlite:///store.db"}))


def test_fuzz_figures(capsys):
    """Prints the figures of the fuzz tests above (run with -s to see them) and checks they ran."""
    found = [getattr(t, "figures", None) for t in (test_fuzz_spec_files_through_run,
                                                   test_fuzz_every_command_s_arguments)]
    if None in found:
        pytest.skip("run with the fuzz tests (same session, in file order)")
    for figures in found:
        assert figures.examples > 0 and figures.errors
        with capsys.disabled():
            print(figures.report())
