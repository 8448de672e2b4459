"""compressed-tensors export round trip: a mixed plan scored by a worker, exported, loaded by plain
``AutoModel*.from_pretrained`` in a fresh process (no mpsearch import there), re-scored: the
trial's objective to 1e-4 relative, and the weights on disk against the cost model's total_bytes.
"""

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpsearch.spaces import parse_option
from mpsearch.workers.checkpoint import CheckpointError, scoring_setup
from mpsearch.workers.export_ct import (
    ExportError,
    _shapes_model,
    compressed_tensors_schemes,
    export_compressed_tensors,
)
from mpsearch.workers.worker import Worker

CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}  # as conftest
MIXED_CT = ("int4-g32-asym", "int3-ch-sym-gptq", "fp8_e4m3", "int8-ch-asym-clip", "int4-g32-sym",
            "fp16", "int4-g32-asym-gptq-act", "int3-g32-asym-clip-gptq")

# Runs in a fresh interpreter: transformers only, the way a user loads the export.
LOADER = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModel, AutoModelForCausalLM
    path, kind, batches, out = sys.argv[1:5]
    assert not any(m.startswith("mpsearch") for m in sys.modules)
    model = (AutoModelForCausalLM if kind == "causal-lm" else AutoModel).from_pretrained(path)
    with torch.inference_mode():
        outputs = [model(**b) for b in torch.load(batches)]
    main = [o.logits if kind == "causal-lm" else o.last_hidden_state for o in outputs]
    assert not any(m.startswith("mpsearch") for m in sys.modules)
    torch.save(main, out)
""")


def rescore_in_fresh_process(worker: Worker, export_dir, tmp_path) -> float:
    """The objective of ``export_dir`` as a fresh transformers process computes the outputs."""
    torch.save(worker.batches, tmp_path / "batches.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    run = subprocess.run([sys.executable, str(tmp_path / "loader.py"), str(export_dir),
                          worker.setup.kind, str(tmp_path / "batches.pt"), str(tmp_path / "out.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    total, count = 0.0, 0.0
    for batch, ref, out in zip(worker.batches, worker.reference, torch.load(tmp_path / "out.pt"),
                               strict=True):
        output = SimpleNamespace(logits=out, last_hidden_state=out)
        (s, n), _ = worker.objective.score(ref, output, batch)
        total, count = total + float(s), count + float(n)
    return total / count


@pytest.mark.slow
@pytest.mark.parametrize("model, objective, dtype", [
    ("tiny_llama_path", "kl", "float16"),
    ("tiny_llama_path", "kl", "float32"),
    ("minilm_path", "embedding_distortion", "float16"),
    ("minilm_path", "embedding_distortion", "float32"),
])
def test_export_loads_in_a_fresh_process_and_reproduces_the_trial(request, tmp_path, model,
                                                                  objective, dtype,
                                                                  scored_trial):
    worker, options, stored, cost = scored_trial(request.getfixturevalue(model), objective, dtype, MIXED_CT)
    assert len({o.label for o in options.values()}) >= 3
    result = export_compressed_tensors(worker.setup, options, tmp_path / "ct",
                                       plan={"provenance": {"objective": stored}})
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    targets = [t for g in config["config_groups"].values() for t in g["targets"]]
    assert len(targets) == len(set(targets))  # non-overlapping module names, no class names
    assert set(targets) == {n for n, o in options.items() if o.label != "fp16"}
    assert len(config["config_groups"]) == len(set(MIXED_CT)) - 1  # one group per quantized option
    strategies = {g["weights"]["strategy"] for g in config["config_groups"].values()}
    assert strategies == {"group", "channel"}  # vLLM's layouts, zero points included

    source = Path(worker.setup.model_path)
    for side in ("modules.json", "1_Pooling", "sentence_bert_config.json"):  # MiniLM's modules
        assert (tmp_path / "ct" / side).exists() == (source / side).exists(), side

    from safetensors import safe_open

    with safe_open(tmp_path / "ct" / "model.safetensors", "pt") as f:
        zp = f.get_tensor("model.layers.0.self_attn.q_proj.weight_zero_point"
                          if "llama" in model else
                          "encoder.layer.0.attention.self.query.weight_zero_point")
        out_f = 64 if "llama" in model else 384
        assert zp.dtype == torch.int32 and zp.shape == (out_f * 4 // 32, out_f // 32)  # packed

    value = rescore_in_fresh_process(worker, tmp_path / "ct", tmp_path)
    assert value == pytest.approx(stored, rel=1e-4)
    print(f"re-scored {value}; stored {stored}; on disk {result.weight_bytes} bytes; cost model "
          f"{cost.total_bytes:.0f} bytes")
    assert result.weight_bytes == pytest.approx(cost.total_bytes, rel=0.02)


MIXED_FP4 = ("nvfp4", "mxfp4", "fp16")


@pytest.mark.slow
@pytest.mark.parametrize("model, objective", [("tiny_llama_path", "kl"),
                                              ("minilm_path", "embedding_distortion")])
def test_fp4_export_of_a_bfloat16_study_reproduces_the_trial(request, tmp_path, model, objective,
                                                             scored_trial):
    """NVFP4 and MXFP4 as compressed-tensors stores them (E2M1 codes two a byte; E4M3 scales and
    1/g, or E8M0 exponents), the trial's own parts, rescored by transformers in a fresh process."""
    from safetensors import safe_open

    worker, options, stored, cost = scored_trial(request.getfixturevalue(model), objective,
                                                 "bfloat16", MIXED_FP4)
    result = export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert sorted(g["format"] for g in config["config_groups"].values()) == [
        "mxfp4-pack-quantized", "nvfp4-pack-quantized"]
    by_label = {o.label: n for n, o in options.items()}
    with safe_open(tmp_path / "ct" / "model.safetensors", "pt") as f:
        nv, mx = by_label["nvfp4"], by_label["mxfp4"]
        enc = worker.encoded(nv, options[nv])
        assert torch.equal(f.get_tensor(f"{nv}.weight_scale").float(), enc.scale)
        assert torch.equal(f.get_tensor(f"{nv}.weight_global_scale"), 1 / enc.global_scale.reshape(1))
        enc = worker.encoded(mx, options[mx])
        assert torch.equal(2.0 ** (f.get_tensor(f"{mx}.weight_scale").float() - 127), enc.scale)
        assert f.get_tensor(f"{mx}.weight_packed").dtype == torch.uint8
    value = rescore_in_fresh_process(worker, tmp_path / "ct", tmp_path)
    assert value == pytest.approx(stored, rel=1e-4)
    print(f"re-scored {value}; stored {stored}; on disk {result.weight_bytes} bytes; cost model "
          f"{cost.total_bytes:.0f} bytes")
    assert result.weight_bytes == pytest.approx(cost.total_bytes, rel=0.02)


# Options whose scales come out as powers of two on the weights below, so bfloat16 holds each
# fp16 scale exactly: int sym s = 0.875/7, asym s = 0.9375/15, FP8 s = 0.875/448 (per group of
# 32 or per channel); NVFP4 and MXFP4 keep their own scale formats.
MIXED_BF16 = ("int4-g32-sym", "int4-g32-asym", "fp8_e4m3", "int4-ch-asym", "nvfp4", "mxfp4", "fp16")


def _power_of_two_scales_llama(source: str, out: Path) -> str:
    """The tiny Llama with every block's weights in [−0.0625, 0.875], each group of 32 holding
    both ends (bfloat16 values), so the int and FP8 scales above are exact in bfloat16."""
    import shutil

    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and re.search(r"\.\d+\.", name):
                w = (torch.rand_like(module.weight) * 0.9375 - 0.0625).bfloat16().float()
                groups = w.view(w.shape[0], -1, 32)
                groups[..., 0], groups[..., 1] = 0.875, -0.0625
                module.weight.copy_(w)
    model.save_pretrained(out)
    for f in Path(source).iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy(f, out / f.name)
    return str(out)


@pytest.mark.slow
def test_bfloat16_study_with_exact_scales_exports_int_and_fp8(tiny_llama_path, tmp_path,
                                                              scored_trial):
    """A bfloat16 study whose fp16 scales bfloat16 holds exactly: compressed-tensors creates the
    scale parameters in bfloat16 and computes the trial's very weights, so the int and FP8 layers
    export (and reproduce the trial in a fresh process) where other scales are refused."""
    path = _power_of_two_scales_llama(tiny_llama_path, tmp_path / "llama")
    worker, options, stored, cost = scored_trial(path, "kl", "bfloat16", MIXED_BF16)
    assert {o.label for o in options.values()} == set(MIXED_BF16)
    result = export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert len(config["config_groups"]) == len(MIXED_BF16) - 1
    value = rescore_in_fresh_process(worker, tmp_path / "ct", tmp_path)
    assert value == pytest.approx(stored, rel=1e-4)
    print(f"re-scored {value}; stored {stored}; on disk {result.weight_bytes} bytes; cost model "
          f"{cost.total_bytes:.0f} bytes")
    assert result.weight_bytes == pytest.approx(cost.total_bytes, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("expert, dtype", [("int4-g32-sym", "float32"), ("int8-ch-sym", "float16"),
                                           ("fp8_e4m3", "float32")])
def test_fused_moe_experts_export_and_reproduce_the_trial(tiny_mixtral_path, tmp_path, expert,
                                                          dtype, scored_trial):
    """A tiny Mixtral (fused 3-D experts) with every expert slice at one option and its other
    layers mixed: the experts are written in the checkpoint's per-expert layout (w1/w3 cut from
    gate_up_proj, w2 from down_proj) under one ``re:`` group, which transformers' loader
    decompresses into the fused parameters; rescored in a fresh process."""
    from safetensors import safe_open

    from mpsearch.spaces import LayerRule

    rules = (LayerRule(r"experts\.", (parse_option(expert),)),)
    worker, options, stored, cost = scored_trial(tiny_mixtral_path, "kl", dtype,
                                                 ("int4-g32-asym", "fp8_e4m3", "int8-ch-sym",
                                                  "fp16"), first_rules=rules)
    assert sum(".experts." in n for n in options) == 2 * 4 * 2  # every slice: blocks × experts × 2
    result = export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["experts"]["targets"] == [r"re:.*experts\.\d+\.[^.]+$"]
    key = "model.layers.1.block_sparse_moe.experts.2.w3"
    with safe_open(tmp_path / "ct" / "model.safetensors", "pt") as f:
        names = set(f.keys())
        if expert.startswith("int"):
            assert {f"{key}.weight_packed", f"{key}.weight_scale"} <= names
            assert f.get_tensor(f"{key}.weight_scale").dtype == getattr(torch, dtype)
        else:
            assert f.get_tensor(f"{key}.weight").dtype == torch.float8_e4m3fn
    assert f"{key}.weight" not in names or not expert.startswith("int")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").model.layers[1].mlp.experts
    for param in ("gate_up_proj", "down_proj"):  # the scored weights, bit for bit
        scored = worker.variant(f"model.layers.1.mlp.experts.2.{param}", parse_option(expert))
        assert torch.equal(getattr(loaded, param)[2], scored.to(getattr(loaded, param).dtype))
    value = rescore_in_fresh_process(worker, tmp_path / "ct", tmp_path)
    assert value == pytest.approx(stored, rel=1e-4)
    print(f"re-scored {value}; stored {stored}; on disk {result.weight_bytes} bytes; cost model "
          f"{cost.total_bytes:.0f} bytes")
    assert result.weight_bytes == pytest.approx(cost.total_bytes, rel=0.02)


def test_unrepresentable_options_are_refused_naming_layer_and_option(tiny_llama_path,
                                                                     tiny_gpt2_path, tmp_path):
    setup = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION)
    layer = "model.layers.0.mlp.up_proj"
    for label, why in (("nf4", "compressed-tensors has no nf4 format"),
                       ("fp8_e5m2", "compressed-tensors stores FP8 as E4M3 only"),
                       ("int4-g32-asym+2:4", "it prunes")):
        with pytest.raises(ExportError, match=re.escape(f"layer {layer}: option {label} cannot be "
                                                        "exported to compressed-tensors: ") + why):
            export_compressed_tensors(setup, {layer: parse_option(label)}, tmp_path / label)
        assert not (tmp_path / label).exists()  # refused before anything is written
    for dtype, fp4 in (("float32", "nvfp4"), ("float16", "mxfp4")):
        with pytest.raises(ExportError, match=f"layer {layer}: option {fp4} cannot be exported to "
                                              f"compressed-tensors from a {dtype} study for "
                                              "transformers: compressed-tensors 0.17.1 "
                                              "decompresses FP4 weights to bfloat16 and does not "
                                              f"cast them, so a {dtype} model's matmul fails"):
            export_compressed_tensors(scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION,
                                                    dtype),
                                      {layer: parse_option(fp4)}, tmp_path / fp4)
        assert not (tmp_path / fp4).exists()
    bf16 = scoring_setup(tiny_llama_path, "auto", "kl", CALIBRATION, "bfloat16")
    for label, scales in (("int4-g32-sym", 128 * 2), ("fp8_e4m3", 128)):
        with pytest.raises(ExportError, match=f"layer {layer}: option {label} cannot be exported "
                                              "to compressed-tensors from a bfloat16 study: "
                                              "compressed-tensors 0.17.1 creates int and FP8 "
                                              r"scales in the model's dtype, and \d+ of the "
                                              f"{scales} fp16 scales the trial was scored with "
                                              r"round in bfloat16 \(\S+ loads as \S+\)"):
            export_compressed_tensors(bf16, {layer: parse_option(label)}, tmp_path / "bf16")
        assert not (tmp_path / "bf16").exists()
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    mixed = {q: parse_option("int4-g32-sym"), k: parse_option("int8-ch-sym")}
    export_ok = compressed_tensors_schemes(_shapes_model(setup), mixed)  # transformers loads it
    assert set(export_ok) == {q, k}
    with pytest.raises(ExportError, match="cannot export for vLLM: model.layers.0.self_attn: vLLM "
                                          "fuses these layers into one matrix"):
        export_compressed_tensors(setup, mixed, tmp_path / "vllm", runtime="vllm")
    with pytest.raises(ExportError, match="option int4-g32-asym cannot be exported for vLLM"):
        export_compressed_tensors(setup, {q: parse_option("int4-g32-asym")}, tmp_path / "vllm",
                                  runtime="vllm")
    assert not (tmp_path / "vllm").exists()
    gpt2 = scoring_setup(tiny_gpt2_path, "auto", "kl", CALIBRATION)
    with pytest.raises(ExportError, match="transformer.h.0.mlp.c_fc: .*Conv1D"):
        export_compressed_tensors(gpt2, {"transformer.h.0.mlp.c_fc": parse_option("int4-g32-sym")},
                                  tmp_path / "gpt2")
    with pytest.raises(CheckpointError, match="no quantizable layer 'nope'"):
        export_compressed_tensors(setup, {"nope": parse_option("int4-g32-sym")}, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        export_compressed_tensors(setup, {layer: parse_option("int4-g32-sym")}, tmp_path / "full")


ST_LOADER = textwrap.dedent("""
    import sys, torch
    from sentence_transformers import SentenceTransformer
    path, batches, out = sys.argv[1:4]
    model = SentenceTransformer(path, device="cpu")
    assert not any(m.startswith("mpsearch") for m in sys.modules)
    with torch.inference_mode():
        torch.save([model(dict(b))["sentence_embedding"] for b in torch.load(batches)], out)
""")


@pytest.mark.slow
def test_dense_export_of_an_encoder_runs_in_sentence_transformers(minilm_path, tmp_path,
                                                                   scored_trial):
    """``SentenceTransformer(DIR)`` in a fresh process: its modules (pooling, normalize) give the
    embeddings the trial scored (the distortion is a cosine, blind to the normalization)."""
    from mpsearch.workers.checkpoint import write_checkpoint
    from mpsearch.workers.scoring import embedding_distortion

    worker, options, stored, _ = scored_trial(minilm_path, "embedding_distortion", "float32",
                                              MIXED_CT)
    out = write_checkpoint(minilm_path, options, tmp_path / "dense", setup=worker.setup)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling",
                                                               "Normalize"]
    torch.save(worker.batches, tmp_path / "batches.pt")
    (tmp_path / "st.py").write_text(ST_LOADER)
    run = subprocess.run([sys.executable, str(tmp_path / "st.py"), str(out),
                          str(tmp_path / "batches.pt"), str(tmp_path / "emb.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    embeddings = torch.load(tmp_path / "emb.pt")
    assert all(torch.allclose(e.norm(dim=-1), torch.ones(len(e))) for e in embeddings)  # Normalize
    d = torch.cat([embedding_distortion(ref, e) for ref, e in zip(worker.reference, embeddings,
                                                                    strict=True)])
    assert float(d.mean()) == pytest.approx(stored, rel=1e-4)


# sentence-transformers 6.2 calls ``getattr(model, "forward")(...)``, past nn.Module.__call__ and so
# past the forward pre-hook through which compressed-tensors decompresses the model; one call of
# the transformers model itself (what AutoModel users do anyway) runs the hook.
ST_CT_LOADER = textwrap.dedent("""
    import sys, torch
    from sentence_transformers import SentenceTransformer
    path, batches, out, run_compressed_false = sys.argv[1:5]
    try:  # transformers' load-time decompression, asked for by the checkpoint
        SentenceTransformer(run_compressed_false, device="cpu")
        dequantized = "loaded"
    except RuntimeError as exc:
        dequantized = str(exc)
    model = SentenceTransformer(path, device="cpu")
    batches = torch.load(batches)
    try:
        model(dict(batches[0]))
        plain = "ran"
    except AttributeError as exc:
        plain = str(exc)
    encoder = model[0].model
    encoder(**model[0].tokenizer(["decompress"], return_tensors="pt"))  # the hook decompresses
    assert not any(m.startswith("mpsearch") for m in sys.modules)
    with torch.inference_mode():
        embeddings = [model(dict(b))["sentence_embedding"] for b in batches]
    torch.save({"plain": plain, "dequantized": dequantized, "embeddings": embeddings}, out)
""")


@pytest.mark.slow
def test_compressed_tensors_export_of_an_encoder_runs_in_sentence_transformers(minilm_path,
                                                                               tmp_path,
                                                                               scored_trial):
    """The MiniLM's compressed-tensors export in ``SentenceTransformer(DIR)``, in a fresh process:
    its modules (pooling, normalize) give the embeddings the trial scored once the transformers
    model has been called through ``__call__`` once (sentence-transformers' own call skips
    compressed-tensors' decompression hook, and fails on the packed layers). A checkpoint that asks
    for transformers' load-time decompression (``run_compressed: false``) does not load: that
    route decodes every layer with the first config group's scheme."""
    from mpsearch.workers.scoring import embedding_distortion

    worker, options, stored, cost = scored_trial(minilm_path, "embedding_distortion", "float32",
                                                 MIXED_CT)
    result = export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    modules = json.loads((result.path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling",
                                                               "Normalize"]
    dequantized = tmp_path / "run-compressed-false"
    shutil.copytree(result.path, dequantized)
    config = json.loads((dequantized / "config.json").read_text())
    config["quantization_config"]["run_compressed"] = False
    (dequantized / "config.json").write_text(json.dumps(config))
    torch.save(worker.batches, tmp_path / "batches.pt")
    (tmp_path / "st.py").write_text(ST_CT_LOADER)
    run = subprocess.run([sys.executable, str(tmp_path / "st.py"), str(result.path),
                          str(tmp_path / "batches.pt"), str(tmp_path / "emb.pt"), str(dequantized)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = torch.load(tmp_path / "emb.pt")
    assert loaded["plain"] == "'Linear' object has no attribute 'weight'"  # the packed layer
    assert loaded["dequantized"].startswith("We encountered some issues during automatic conversion")
    embeddings = loaded["embeddings"]
    assert all(torch.allclose(e.norm(dim=-1), torch.ones(len(e))) for e in embeddings)  # Normalize
    d = torch.cat([embedding_distortion(ref, e) for ref, e in zip(worker.reference, embeddings,
                                                                    strict=True)])
    assert float(d.mean()) == pytest.approx(stored, rel=1e-4)
    print(f"re-scored {float(d.mean())}; stored {stored}; on disk {result.weight_bytes} bytes; "
          f"cost model {cost.total_bytes:.0f} bytes")
    assert result.weight_bytes == pytest.approx(cost.total_bytes, rel=0.02)


def test_a_plan_for_another_model_is_refused_by_its_shapes(tiny_llama_path):
    from mpsearch.workers.checkpoint import check_plan_shapes

    up = "model.layers.0.mlp.up_proj"
    check_plan_shapes(tiny_llama_path, "causal-lm", {up: (128, 64)})
    with pytest.raises(CheckpointError, match=f"layer {up} is 128×64 in .*, the plan's is "
                                              "256×64: the plan was made for another model"):
        check_plan_shapes(tiny_llama_path, "causal-lm", {up: (256, 64)})
    with pytest.raises(CheckpointError, match="no quantizable layer 'transformer.h.0.mlp.c_fc'"):
        check_plan_shapes(tiny_llama_path, "causal-lm", {"transformer.h.0.mlp.c_fc": (256, 64)})


def test_a_checkpoint_its_loader_cannot_read_is_one_line_at_verify(minilm_path, tmp_path):
    """``--verify`` of a checkpoint transformers fails to load (here a config.json cut short):
    a CheckpointError naming the file and what the loader raised, never the loader's traceback."""
    from mpsearch.workers.checkpoint import rescore_checkpoint

    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken)
    text = (broken / "config.json").read_text()
    (broken / "config.json").write_text(text[: len(text) // 2])
    setup = scoring_setup(minilm_path, "auto", "embedding_distortion", CALIBRATION)
    with pytest.raises(CheckpointError, match=r"cannot re-score broken: transformers does not "
                                              r"load it \(\w+Error: ") as exc:
        rescore_checkpoint(broken, setup)
    assert "\n" not in str(exc.value)
