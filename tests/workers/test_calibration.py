"""Calibration text: the built-in corpus is real, stable and import-independent; user files load."""

import subprocess
import sys

import pytest

from mpsearch.workers.calibration import load_texts, stdlib_texts
from mpsearch.workers.config import CalibrationConfig
from mpsearch.workers.errors import WorkerError


def test_builtin_corpus_is_prose_and_offsets_give_disjoint_sets():
    texts = stdlib_texts()
    assert len(texts) > 1000 and len(set(texts)) == len(texts)
    assert all(len(t) >= 80 for t in texts)
    calib = load_texts(CalibrationConfig(samples=32))
    held_out = load_texts(CalibrationConfig(samples=32, offset=32))
    assert not set(calib) & set(held_out)


def test_builtin_corpus_does_not_depend_on_what_is_imported():
    code = ("import {pre} mpsearch.workers.calibration as c; import hashlib; "
            "print(hashlib.sha256('|'.join(c.stdlib_texts()).encode()).hexdigest())")
    plain = subprocess.run([sys.executable, "-c", code.format(pre="")], capture_output=True,
                           text=True, check=True).stdout
    with_ray = subprocess.run([sys.executable, "-c", code.format(pre="ray, inspect, typing,")],
                              capture_output=True, text=True, check=True).stdout
    assert plain == with_ray


def test_user_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\nsecond line\nthird\n")
    assert load_texts(CalibrationConfig(source=str(txt), samples=2, offset=1)) == [
        "second line", "third"]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert load_texts(CalibrationConfig(source=str(jsonl), samples=2, text_field="body")) == [
        "a", "b"]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(WorkerError, match="no such file 'nope.txt'"):
        load_texts(CalibrationConfig(source="nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(WorkerError, match=r"bad\.jsonl:2 is not a JSON object"):
        load_texts(CalibrationConfig(source=str(bad), samples=2))
    short = tmp_path / "short.txt"
    short.write_text("one\n")
    with pytest.raises(WorkerError, match="has 1 samples, 4 needed"):
        load_texts(CalibrationConfig(source=str(short), samples=4))
