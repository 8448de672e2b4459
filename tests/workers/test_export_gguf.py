"""GGUF export round trip: a mixed plan on a tiny Llama and a GPT-2 (Conv1D), written by gguf's
writer, read back with gguf's reader (types as planned, dequantized values equal to the scored
weights), and loaded by transformers' own GGUF loader in a fresh process: the trial's objective.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mpsearch.spaces import parse_option
from mpsearch.workers.checkpoint import CheckpointError, scoring_setup
from mpsearch.workers.export_ct import ExportError
from mpsearch.workers.export_gguf import export_gguf, gguf_type

CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}

MIXED = ("q4_0", "q8_0", "q4_1", "q5_0", "q5_1", "int4-g32-sym", "int8-g32-sym", "mxfp4", "fp16")

LOADER = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    directory, name, batches, out = sys.argv[1:5]
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name).eval()
    assert not any(m.startswith("mpsearch") for m in sys.modules)
    with torch.inference_mode():
        torch.save([model(**b).logits for b in torch.load(batches)], out)
""")


@pytest.fixture(scope="module")
def gpt2_1024(tmp_path_factory, tiny_gpt2_path) -> str:
    """The tiny GPT-2 with 1,024 positions: transformers' GGUF loader reads GPT-2's context length
    into n_ctx and leaves n_positions at its default, 1,024."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("gpt2-1024")
    for item in Path(tiny_gpt2_path).iterdir():
        if item.name.startswith("tokenizer") or item.name in ("vocab.txt",
                                                              "special_tokens_map.json"):
            shutil.copy(item, out / item.name)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=64, n_layer=2, n_head=4,
                               n_positions=1024, pad_token_id=0)).save_pretrained(out)
    return str(out)


def unpermute(name: str, w: np.ndarray, config) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (as transformers' GGUF loader does)."""
    if config.model_type != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return w
    heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


@pytest.mark.slow
@pytest.mark.parametrize("model, embedding", [("tiny_llama_path", False), ("gpt2_1024", False),
                                              ("tiny_llama_path", True)])
def test_gguf_round_trip_reader_and_transformers(request, tmp_path, model, embedding,
                                                 scored_trial):
    """``embedding``: the Llama's untied embed_tokens searched too, as Q4_0 from a clipped GPTQ
    level (round-to-nearest on a lookup): GGUF's token_embd."""
    import gguf
    from transformers import AutoConfig

    from mpsearch.spaces.space import LayerRule

    path = request.getfixturevalue(model)
    first = (LayerRule(r"^model\.embed_tokens$", (parse_option("int4-g32-sym-clip-gptq"),)),)
    worker, options, stored, cost = scored_trial(path, "kl", "float32", labels=MIXED,
                                                 unsearched_bits=32,
                                                 first_rules=first if embedding else ())
    assert ("model.embed_tokens" in options) == embedding
    out = export_gguf(worker.setup, options, tmp_path / "gguf" / "model.gguf",
                      plan={"provenance": {"objective": stored}})

    reader = gguf.GGUFReader(str(out))
    config = AutoConfig.from_pretrained(path)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    for layer, option in options.items():
        tensor = tensors[names.get_name(layer) + ".weight"]
        assert tensor.tensor_type.name == gguf_type(option), layer
        values = unpermute(tensor.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                           config)
        assert np.array_equal(values, worker.variant(layer, option).numpy()), layer
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    print(f"tensors {tensor_bytes} bytes (file {out.stat().st_size}); cost model "
          f"{cost.total_bytes:.0f} bytes")
    assert tensor_bytes == pytest.approx(cost.total_bytes, rel=0.02)

    torch.save(worker.batches, tmp_path / "batches.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    run = subprocess.run([sys.executable, str(tmp_path / "loader.py"), str(out.parent), out.name,
                          str(tmp_path / "batches.pt"), str(tmp_path / "out.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    with torch.inference_mode():  # the worker's model still holds the scored candidate
        scored = [worker.model(**batch).logits for batch in worker.batches]
    for mine, theirs in zip(scored, loaded, strict=True):  # float32's tolerances
        torch.testing.assert_close(theirs, mine)
    # The fresh process's logits differ from these by float32 noise (close, as asserted); a KL
    # as small as the random GPT-2's (4e-5) moves with them by (q − p)·Δz per position, about
    # 1e-4 of itself, so that first-order shift is taken out before the comparison.
    from mpsearch.workers.objectives import _valid_next

    total, count, shift = 0.0, 0.0, 0.0
    for batch, ref, logits, mine in zip(worker.batches, worker.reference, loaded, scored,
                                        strict=True):
        (s, n), _ = worker.objective.score(ref, type("Out", (), {"logits": logits}), batch)
        total, count = total + float(s), count + float(n)
        q, p = torch.softmax(mine.double(), dim=-1)[:, :-1], ref[:, :-1].double().exp()
        dz = (logits.double() - mine.double())[:, :-1]
        valid = _valid_next(batch["attention_mask"])  # the positions the KL is taken at
        shift += float((((q - p) * dz).sum(dim=-1) * valid).sum())
    print(f"KL {total / count} (float shift {shift / count}); stored {stored}")
    assert (total - shift) / count == pytest.approx(stored, rel=1e-4)


def test_a_gpt2_transformers_cannot_read_back_is_refused_at_verify(tiny_gpt2_path, tmp_path):
    """The tiny GPT-2 has 256 positions: transformers' GGUF loader would build 1,024 and fail."""
    from mpsearch.workers.checkpoint import rescore_checkpoint

    setup = scoring_setup(tiny_gpt2_path, "auto", "kl", CALIBRATION)
    out = export_gguf(setup, {"transformer.h.0.mlp.c_fc": parse_option("mxfp4")},
                      tmp_path / "gpt2.gguf")
    assert out.stat().st_size > 0
    with pytest.raises(CheckpointError, match="keeps n_positions at 1,024, and this GPT-2 has 256 "
                                              "positions"):
        rescore_checkpoint(out, setup)


def test_gguf_refuses_what_it_cannot_hold(tiny_llama_path, minilm_path, tmp_path):
    setup = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION)
    layer = "model.layers.0.mlp.up_proj"
    for label in ("int4-g32-asym", "nf4", "nvfp4", "int4-g64-sym", "q4_0+2:4"):
        with pytest.raises(ExportError, match=f"layer {layer}: option .* cannot be exported to "
                                              "GGUF"):
            export_gguf(setup, {layer: parse_option(label)}, tmp_path / f"{label}.gguf")
        assert not (tmp_path / f"{label}.gguf").exists()
    encoder = scoring_setup(minilm_path, "auto", "embedding_distortion", CALIBRATION)
    with pytest.raises(ExportError, match="maps llama, gpt2 models; this one is 'bert'"):
        export_gguf(encoder, {}, tmp_path / "bert.gguf")
    (tmp_path / "there.gguf").write_text("")
    with pytest.raises(CheckpointError, match="exists"):
        export_gguf(setup, {layer: parse_option("q8_0")}, tmp_path / "there.gguf")
