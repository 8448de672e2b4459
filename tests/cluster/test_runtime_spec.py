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


@pytest.mark.parametrize("runtime, refused", [("vllm", True), ("transformers", True),
                                              ("llama.cpp", False)])
def test_a_quantized_embedding_is_refused_for_a_compressed_tensors_runtime(tiny_llama_path,
                                                                          tmp_path, runtime,
                                                                          refused):
    """vLLM and transformers load compressed-tensors, which cannot hold a packed embedding that
    transformers rebuilds; llama.cpp's GGUF holds token_embd quantized. An fp16 embedding is
    fine everywhere."""
    from mpsearch.cluster.job import prepare
    from mpsearch.cluster.spec import parse_spec

    def spec(embedding_options):
        return parse_spec({
            "study": "rt", "model": {"name": tiny_llama_path},
            "calibration": {"samples": 2, "seq_len": 16},
            "space": {"layers": [{"match": r"^model\.embed_tokens$", "options": embedding_options},
                                 {"match": r"layers\.\d+\.", "options": ["int4-g32-sym", "fp16"]}],
                      "runtime": runtime},
            "budget": {"avg_bits": 16}, "storage": {"url": f"sqlite:///{tmp_path / 's.db'}"}})

    if refused:
        with pytest.raises(SpecError, match=rf"space.runtime {runtime}: layer model.embed_tokens "
                                            r"is an embedding.*give it \[fp16\]"):
            prepare(spec(["int4-g32-sym", "fp16"]))
    else:
        assert prepare(spec(["int4-g32-sym", "fp16"])).space.genes[0].name == "model.embed_tokens"
    assert prepare(spec(["fp16"])).space.genes[0].name == "model.embed_tokens"
    assert not (tmp_path / "s.db").exists()
