"""A spec's space.runtime: prepare() removes what the runtime cannot load and ties what it fuses."""

import pytest

from mpsearch.spaces.errors import SpecError


def test_a_spec_with_a_runtime_prepares_a_restricted_tied_space(tiny_llama_path, tmp_path,
                                                                caplog):
    from mpsearch.cluster.job import prepare
    from mpsearch.cluster.spec import parse_spec

    fields = {"study": "rt", "model": {"name": tiny_llama_path},
              "calibration": {"samples": 2, "seq_len": 16},
              "space": {"layers": [{"match": r"layers\.\d+\.",
                                    "options": ["int4-g32-asym", "int4-g32-sym", "fp16"]}],
                        "runtime": "vllm"},
              "budget": {"avg_bits": 8}, "storage": {"url": f"sqlite:///{tmp_path / 's.db'}"}}
    with caplog.at_level("WARNING", logger="mpsearch.cluster"):
        space = prepare(parse_spec(fields)).space
    assert "option int4-g32-asym removed" in caplog.text
    assert {o.label for g in space.genes for o in g.options} == {"int4-g32-sym", "fp16"}
    assert len(space.genes) == 2 * 4 and len(space.layers) == 2 * 7
    with pytest.raises(SpecError, match="runtime"):
        parse_spec({**fields, "space": {**fields["space"], "runtime": "onnx"}})
