"""``mpsearch run`` refuses the issue's bad input before anything is stored: one line, exit 1, no
database file: a frontier with a budget below the cheapest configuration, an empty dataset, a
column that does not exist, a chat template on a model without one."""

import pytest
import yaml

from .conftest import assert_one_line_error, invoke

pytestmark = pytest.mark.slow  # each run inspects MiniLM


@pytest.fixture
def data(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one sample"] * 4, "label": [0] * 4}).to_parquet(
        str(tmp_path / "four.parquet"))
    datasets.Dataset.from_dict({"text": ["x"]}).select([]).to_parquet(
        str(tmp_path / "empty.parquet"))
    return tmp_path


@pytest.mark.parametrize("fields, parts", [
    ({"budget": {"avg_bits": [4.0, 2.0, 3.0]}},
     ("frontier budget 1 of 3, avg_bits <= 2 is below the cheapest configuration of the space "
      "(avg_bits 2.",)),
    ({"calibration": {"source": "{data}/empty.parquet"}}, ("empty.parquet' is empty (0 rows)",)),
    ({"calibration": {"source": "{data}/four.parquet", "text_field": "body", "samples": 4}},
     ("no column 'body'; its columns: text, label",)),
    ({"calibration": {"chat_template": True, "text_field": "messages"}},
     ("calibration.chat_template: the tokenizer of", "has no chat template")),
])
def test_bad_input_is_one_line_exit_1_and_stores_nothing(data, fields, parts):
    db = data / "none.db"
    spec = {"study": "bad", "budget": {"avg_bits": 4.25}, "storage": {"url": f"sqlite:///{db}"},
            **fields}
    text = yaml.safe_dump(spec).replace("{data}", str(data))
    (data / "job.yaml").write_text(text)
    assert_one_line_error(invoke("run", str(data / "job.yaml")), *parts)
    assert not db.exists()
