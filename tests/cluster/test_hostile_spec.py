"""A hostile or careless spec is refused in one line before anything is written (SQLite, PostgreSQL).

Each case runs the real ``mpsearch run`` entry point in-process and checks: exit 1, one line on
stderr naming the field, and no trace in the store: no SQLite file at all, and on PostgreSQL no
study row (nor tables, in a fresh database).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

LAYERS = r"layers\.\d+\."


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store(request, tmp_path):
    """(url, check) where ``check()`` asserts nothing was ever written there."""
    if request.param == "sqlite":
        path = tmp_path / "never.db"

        def check() -> None:
            assert not path.exists(), "a store file was created before the spec was validated"
        return f"sqlite:///{path}", check
    url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())

    def check() -> None:
        with engine.connect() as conn:
            now = set(inspect(conn).get_table_names())
            assert now == tables, f"tables created: {now - tables}"
            if "mps_study" in now:
                assert conn.scalar(text("SELECT count(*) FROM mps_study WHERE name = 'hostile'")) == 0
        engine.dispose()
    return url, check


def write_spec(tmp_path: Path, model: str, url: str, **fields) -> str:
    data = {"study": "hostile", "model": {"name": model},
            "calibration": {"samples": 4, "seq_len": 16},
            "space": {"layers": [{"match": LAYERS, "options": ["int4-g32-asym", "fp16"]}]},
            "budget": {"avg_bits": 6}, "evaluations": 4, "storage": {"url": url}}
    for key, value in fields.items():
        section, _, sub = key.partition("__")
        if sub:
            data[section] = {**data[section], sub: value}
        else:
            data[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


CASES = {
    "os-system": (dict(objective="os:system"), ["objective", "'os:system'", "refused"]),
    "import-eval": (dict(objective="builtins:eval"), ["objective", "refused"]),
    "unknown-objective": (dict(objective="nope"), ["objective 'nope' is unknown", "kl"]),
    "infinite-budget": (dict(budget={"avg_bits": 1e309}), ["budget.avg_bits", "finite"]),
    "nan-budget": (dict(budget={"avg_bits": float("nan")}), ["budget.avg_bits", "finite"]),
    "negative-budget": (dict(budget={"total_bytes": -1}), ["budget.total_bytes"]),
    "infinite-param": (dict(searcher={"name": "evolutionary", "params": {"offspring": 1e400}}),
                       ["searcher.params.offspring", "finite"]),
    "evaluations": (dict(evaluations=1_000_000_000_000), ["evaluations", "1000000"]),
    "seed": (dict(seed=-1), ["seed"]),
    "seq-len": (dict(calibration__seq_len=100000), ["calibration.seq_len", "256 positions"]),
    "regex-syntax": (dict(space={"layers": [{"match": "(", "options": ["fp16"]}]}),
                     ["space.layers", "invalid regular expression"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_one_line_before_anything_is_written(case, empty_store, tmp_path,
                                                        tiny_llama_path, cli_inprocess):
    url, nothing_written = empty_store
    fields, parts = CASES[case]
    res = cli_inprocess.invoke("run", write_spec(tmp_path, tiny_llama_path, url, **fields))
    cli_inprocess.assert_one_line_error(res, *parts)
    nothing_written()


def test_validating_a_good_spec_writes_nothing_either(tmp_path, tiny_llama_path):
    """`run` validates with `prepare` before it opens the store: prepare itself writes nothing."""
    from mpsearch.cluster.job import prepare
    from mpsearch.cluster.spec import load_spec

    path = tmp_path / "ok.db"
    spec = load_spec(write_spec(tmp_path, tiny_llama_path, f"sqlite:///{path}"))
    prepare(spec)
    assert not path.exists()


def test_seq_len_above_the_model_positions_names_them(tmp_path, cli_inprocess):
    res = cli_inprocess.invoke("run", write_spec(tmp_path, "minilm", f"sqlite:///{tmp_path}/x.db",
                                                 calibration__seq_len=100000,
                                                 space={"layers": [{"match": r"layer\.\d+\."}]}))
    cli_inprocess.assert_one_line_error(res, "calibration.seq_len", "100000", "'minilm'",
                                        "512 positions")


# Tribonacci-many ways to split a name, all tried before the lookbehind fails (matches none).
BACKTRACKING = r"^([\w.]|[\w.]{2}|[\w.]{3})+(?<![jd])$"


@pytest.mark.parametrize("where", ["space.layers", "space.tie"])
def test_a_backtracking_pattern_is_refused_within_the_time_limit(where, tmp_path, tiny_llama_path,
                                                                 cli_inprocess):
    pattern = BACKTRACKING
    space = {"layers": [{"match": pattern if where == "space.layers" else LAYERS,
                         "options": ["int4-g32-asym", "fp16"]}],
             "tie": [pattern] if where == "space.tie" else []}
    spec = write_spec(tmp_path, tiny_llama_path, f"sqlite:///{tmp_path}/x.db", space=space)
    start = time.perf_counter()
    res = cli_inprocess.invoke("run", spec)
    assert time.perf_counter() - start < 15  # the limit (the engine checks it coarsely), no hang
    cli_inprocess.assert_one_line_error(res, where, "took more than", "backtracking")
    assert not (tmp_path / "x.db").exists()


def test_the_issue_pattern_ends_at_once_with_no_match(tmp_path, tiny_llama_path, cli_inprocess):
    """``^([\\w.]+)+!$`` hung ``re`` for good; the regex engine sees no "!" and answers at once."""
    spec = write_spec(tmp_path, tiny_llama_path, f"sqlite:///{tmp_path}/x.db",
                      space={"layers": [{"match": r"^([\w.]+)+!$", "options": ["fp16"]}]})
    start = time.perf_counter()
    res = cli_inprocess.invoke("run", spec)
    assert time.perf_counter() - start < 10
    cli_inprocess.assert_one_line_error(res, "space.layers", "matches no quantizable layer")


def test_a_binary_spec_names_the_file_and_byte_offset(tmp_path, cli_inprocess):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"study: caf\xe9\nbudget: {avg_bits: 4}\n")
    res = cli_inprocess.invoke("run", str(path))
    cli_inprocess.assert_one_line_error(res, str(path), "not UTF-8", "offset 10", "0xe9")
    path.write_bytes(bytes(range(256)) * 4)
    cli_inprocess.assert_one_line_error(cli_inprocess.invoke("run", str(path)), "offset 128")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_non_utf8_calibration_file_names_the_file_and_byte_offset(suffix, tmp_path,
                                                                    tiny_llama_path, cli_inprocess):
    calib = tmp_path / f"calib{suffix}"
    line = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine\n"
    calib.write_bytes(line * 3 + b"\xff\xfe latin-1 \xe9\n")
    spec = write_spec(tmp_path, tiny_llama_path, f"sqlite:///{tmp_path}/x.db",
                      calibration={"source": str(calib), "samples": 2, "seq_len": 16})
    res = cli_inprocess.invoke("run", spec)
    cli_inprocess.assert_one_line_error(res, str(calib), "not UTF-8", f"offset {3 * len(line)}")
    assert not (tmp_path / "x.db").exists()


def test_a_missing_database_driver_is_one_line(tmp_path, cli_inprocess):
    res = cli_inprocess.invoke("status", "--db", "postgresql+pg8000://u:hunter2@127.0.0.1/db")
    cli_inprocess.assert_one_line_error(res, "'pg8000' is not installed", "u:***@")
    assert "hunter2" not in res.stderr


def test_yaml_1e309_as_written_is_refused(tmp_path, tiny_llama_path, cli_inprocess):
    """YAML reads ``1e309`` (no dot) as a string that pydantic would turn into infinity."""
    path = Path(write_spec(tmp_path, tiny_llama_path, f"sqlite:///{tmp_path}/x.db"))
    path.write_text(path.read_text().replace("avg_bits: 6", "avg_bits: 1e309"))
    res = cli_inprocess.invoke("run", str(path))
    cli_inprocess.assert_one_line_error(res, "budget.avg_bits", "finite")
    assert not (tmp_path / "x.db").exists()
