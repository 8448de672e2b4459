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


# -- datasets sources and chat templates ------------------------------------------------------
ROWS = {"text": [f"sample number {i} of a local dataset" for i in range(6)],
        "label": list(range(6))}


def _dataset():
    import datasets

    return datasets.Dataset.from_dict(ROWS)


@pytest.mark.parametrize("kind", ["saved", "saved-dict", "parquet", "arrow", "json", "csv"])
def test_local_datasets_give_the_column_in_order(tmp_path, kind):
    import datasets

    ds = _dataset()
    path = tmp_path / {"saved": "ds", "saved-dict": "dd", "parquet": "c.parquet",
                       "arrow": "c.arrow", "json": "c.json", "csv": "c.csv"}[kind]
    if kind == "saved":
        ds.save_to_disk(str(path))
    elif kind == "saved-dict":
        datasets.DatasetDict({"train": ds, "test": ds.select([5, 4])}).save_to_disk(str(path))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "arrow":
        import pyarrow as pa

        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ds.data.schema) as w:
            w.write_table(ds.data.table)
    elif kind == "json":
        ds.to_json(str(path))
    else:
        ds.to_csv(str(path), index=False)
    cfg = CalibrationConfig(source=str(path), samples=3, offset=2)
    assert load_texts(cfg) == ROWS["text"][2:5]
    if kind == "saved-dict":
        test = load_texts(cfg.model_copy(update={"split": "test", "samples": 2, "offset": 0}))
        assert test == [ROWS["text"][5], ROWS["text"][4]]
        with pytest.raises(WorkerError, match="has no split 'dev'; its splits: train, test"):
            load_texts(cfg.model_copy(update={"split": "dev"}))


def test_a_missing_column_names_the_columns_and_an_empty_dataset_is_refused(tmp_path):
    _dataset().to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(WorkerError, match=r"no column 'body'; its columns: text, label$"):
        load_texts(CalibrationConfig(source=str(tmp_path / "c.parquet"), text_field="body",
                                     samples=2))
    with pytest.raises(WorkerError, match="sample 0 of .* is int, not text"):
        load_texts(CalibrationConfig(source=str(tmp_path / "c.parquet"), text_field="label",
                                     samples=2))
    _dataset().select([]).to_parquet(str(tmp_path / "empty.parquet"))
    _dataset().select([]).save_to_disk(str(tmp_path / "empty"))
    (tmp_path / "empty.csv").write_text("text,label\n")
    for empty in ("empty.parquet", "empty", "empty.csv"):
        with pytest.raises(WorkerError, match=r"is empty \(0 rows\)"):
            load_texts(CalibrationConfig(source=str(tmp_path / empty), samples=1))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(WorkerError, match="has no samples"):
        load_texts(CalibrationConfig(source=str(tmp_path / "empty.txt"), samples=1))
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    with pytest.raises(WorkerError, match="cannot read .*bad.parquet' with datasets"):
        load_texts(CalibrationConfig(source=str(tmp_path / "bad.parquet"), samples=1))
    with pytest.raises(WorkerError, match=r"c.jsonl:1 has no field 'text'; its fields: body"):
        (tmp_path / "c.jsonl").write_text('{"body": "a"}\n')
        load_texts(CalibrationConfig(source=str(tmp_path / "c.jsonl"), samples=1))


CHATS = [[{"role": "user", "content": f"question {i}?"},
          {"role": "assistant", "content": f"answer {i}."}] for i in range(4)]


@pytest.fixture
def chat_model(tmp_path, minilm_path):
    """MiniLM's tokenizer with a chat template of its own, as a chat model ships it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n"
                               "{% endfor %}")
    tokenizer.save_pretrained(tmp_path / "chat")
    return str(tmp_path / "chat")


def test_chat_template_renders_conversations_and_the_fingerprint_follows(tmp_path, chat_model,
                                                                         minilm_path):
    import datasets

    from mpsearch.storage.profiles import calibration_fingerprint

    datasets.Dataset.from_dict({"messages": CHATS}).save_to_disk(str(tmp_path / "chats"))
    cfg = CalibrationConfig(source=str(tmp_path / "chats"), text_field="messages", samples=2,
                            chat_template=True)
    texts = load_texts(cfg, chat_model)
    assert texts == ["<|user|> question 0?\n<|assistant|> answer 0.\n",
                     "<|user|> question 1?\n<|assistant|> answer 1.\n"]
    shifted = load_texts(cfg.model_copy(update={"offset": 1}), chat_model)
    fingerprints = {calibration_fingerprint(t, 64) for t in (texts, shifted, [str(c) for c in
                                                                               CHATS[:2]])}
    assert len(fingerprints) == 3  # other data, or the same data unrendered: another fingerprint
    with pytest.raises(WorkerError, match="set calibration.chat_template: true"):
        load_texts(cfg.model_copy(update={"chat_template": False}))
    with pytest.raises(WorkerError, match=f"the tokenizer of {minilm_path} has no chat template"):
        load_texts(cfg, minilm_path)
    with pytest.raises(WorkerError, match="sample 0 of 'stdlib-docs' is not a list of messages"):
        load_texts(CalibrationConfig(samples=1, chat_template=True), chat_model)


def test_hub_source_goes_through_load_dataset(tmp_path):
    """``hub:NAME`` is ``datasets.load_dataset(NAME, subset, split=split)``; a local folder of
    data files is a name it loads without the network."""
    (tmp_path / "train.csv").write_text("text\nalpha\nbeta\ngamma\n")
    cfg = CalibrationConfig(source=f"hub:{tmp_path}", samples=2, offset=1)
    assert load_texts(cfg) == ["beta", "gamma"]
    with pytest.raises(WorkerError, match=r"cannot read 'hub:.*' with datasets: Unknown split "
                                          r"\"dev\""):
        load_texts(cfg.model_copy(update={"split": "dev"}))
