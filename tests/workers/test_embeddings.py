"""Embeddings as searched layers: found when their weight is their own, GPTQ on them equal to
round-to-nearest on the same grid (a lookup's Hessian is diagonal), the Hessian-weighted proxy
equal to the lookup's own output error on the calibration tokens, and what cannot apply to a
lookup (quantized inputs, K-FAC) refused in one line."""

import pytest
import torch

from mpsearch.spaces import SpecError, parse_option
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.spaces.spec import SpaceConfig
from mpsearch.workers.checkpoint import scoring_setup
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.errors import WorkerError
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.profile import measure_proxies, profile_pairs
from mpsearch.workers.worker import Worker

WORD = "embeddings.word_embeddings"
CAL = CalibrationConfig(source="stdlib-docs", samples=8, seq_len=32, batch_size=4)
GPTQ_AND_RTN = [("int3-g128-asym", "int3-g128-asym-gptq"),
                ("int3-g128-asym", "int3-g128-asym-gptq-act"),
                ("int4-g64-sym-clip", "int4-g64-sym-clip-gptq"),
                ("int2-g128-asym-clip", "int2-g128-asym-clip-gptq-act")]


def _worker(path: str, labels, pattern: str = WORD, linear: str | None = None,
            cal: CalibrationConfig = CAL) -> Worker:
    info = inspect_model(ModelConfig(name=path))
    options = tuple(parse_option(label) for label in labels)
    rules = [LayerRule(pattern, options)] + ([LayerRule(linear, options)] if linear else [])
    space = build_space(info.layers, rules, total_params=info.total_params)
    return Worker(scoring_setup(path, "auto", "embedding_distortion" if "minilm" in path
                                else "kl", cal, "float32"), space)


def test_untied_embeddings_are_layers_and_the_default_rule_leaves_them(minilm_path, tiny_gpt2_path,
                                                                       tiny_llama_path):
    minilm = {layer.name: layer for layer in inspect_model(ModelConfig(name=minilm_path)).layers}
    word = minilm[WORD]
    assert (word.kind, word.out_features, word.in_features) == ("embedding", 30522, 384)
    assert word.to_list() == [WORD, 384, 30522, 1.0, "embedding"]
    assert minilm["encoder.layer.0.attention.self.query"].to_list() == [
        "encoder.layer.0.attention.self.query", 384, 384]  # a linear layer's list as before
    gpt2 = {layer.name for layer in inspect_model(ModelConfig(name=tiny_gpt2_path)).layers}
    assert "transformer.wte" not in gpt2 and "lm_head" in gpt2  # tied: the Linear is the layer
    assert "transformer.wpe" in gpt2
    llama = {layer.name for layer in inspect_model(ModelConfig(name=tiny_llama_path)).layers}
    assert "model.embed_tokens" in llama  # untied (tie_word_embeddings: false)

    layers = list(minilm.values())
    default = build_space(layers, SpaceConfig().rules())  # the spec's default rule
    assert len(default.layers) == 36 and all(ly.kind == "linear" for ly in default.layers)


def test_gptq_of_an_embedding_rounds_to_nearest_on_the_same_grid(minilm_path):
    labels = sorted({label for pair in GPTQ_AND_RTN for label in pair})
    worker = _worker(minilm_path, labels, linear=r"encoder\.layer\.0\.attention\.self\.query")
    for rtn, gptq in GPTQ_AND_RTN:
        assert torch.equal(worker.variant(WORD, parse_option(gptq)),
                           worker.variant(WORD, parse_option(rtn))), gptq
        # a linear layer's inputs are correlated: there GPTQ is another weight
        query = "encoder.layer.0.attention.self.query"
        assert not torch.equal(worker.variant(query, parse_option(gptq)),
                               worker.variant(query, parse_option(rtn))), gptq


def test_hessian_proxy_of_an_embedding_is_its_output_error_on_the_calibration_tokens(minilm_path):
    """Σ_r (2·count_r/n) ‖ΔW_r‖² = 2 × the mean over calibration tokens (padding excluded) of
    ‖ΔE[token]‖², what tr(ΔW H ΔWᵀ) with H = 2XᵀX/n is for a linear layer."""
    worker = _worker(minilm_path, ["int2-g128-asym", "int4-g128-asym"])
    W = worker.original[WORD]
    for label in ("int2-g128-asym", "int4-g128-asym"):
        W_hat = worker.variant(WORD, parse_option(label))
        errors = [(W - W_hat)[b["input_ids"][b["attention_mask"].bool()]].square().sum(dim=1)
                  for b in worker.batches]
        direct = 2 * float(torch.cat(errors).mean())
        assert worker.output_error(WORD, W, W_hat) == pytest.approx(direct, rel=1e-5)
    # a row no calibration token looks up costs nothing
    seen = torch.cat([b["input_ids"].reshape(-1) for b in worker.batches]).unique()
    unseen = next(i for i in range(W.shape[0]) if i not in set(seen.tolist()))
    W_hat = W.clone()
    W_hat[unseen] += 1.0
    assert worker.output_error(WORD, W, W_hat) == 0.0
    proxies = measure_proxies(worker, profile_pairs(worker.space))
    assert proxies[(WORD, "int2-g128-asym")] > proxies[(WORD, "int4-g128-asym")] > 0


def test_a_position_embedding_counts_each_position_once_per_real_token(minilm_path, tmp_path):
    """BERT looks positions up with one row of ids for the whole batch; each position is
    weighted by the non-padding tokens at it, as if every token had looked it up itself."""
    name = "embeddings.position_embeddings"
    lines = ["a short one.", "a sentence of a few more words than the first.",
             "three words here", "and the longest of them all, which goes on for a while yet."]
    (tmp_path / "texts.txt").write_text("\n".join(lines * 2))
    cal = CalibrationConfig(source=str(tmp_path / "texts.txt"), samples=8, seq_len=32,
                            batch_size=4)
    worker = _worker(minilm_path, ["int2-g128-asym"], pattern=name, cal=cal)
    assert any(b["attention_mask"].sum() < b["attention_mask"].numel() for b in worker.batches)
    W = worker.original[name]
    W_hat = worker.variant(name, parse_option("int2-g128-asym"))
    per_row = (W - W_hat).square().sum(dim=1)
    errors = [per_row[torch.arange(b["input_ids"].shape[1]).expand_as(b["input_ids"])
                      [b["attention_mask"].bool()]] for b in worker.batches]
    assert worker.output_error(name, W, W_hat) == pytest.approx(
        2 * float(torch.cat(errors).mean()), rel=1e-5)


def test_fisher_proxy_takes_an_embedding_and_kfac_refuses_it_in_one_line(minilm_path):
    worker = _worker(minilm_path, ["int2-g128-asym", "int4-g128-asym"])
    fisher = measure_proxies(worker, profile_pairs(worker.space), kind="fisher")
    assert fisher[(WORD, "int2-g128-asym")] > fisher[(WORD, "int4-g128-asym")] > 0
    with pytest.raises(WorkerError, match=r"kfac .* embeddings\.word_embeddings is an embedding"
                       ) as exc:
        measure_proxies(worker, profile_pairs(worker.space), kind="kfac")
    assert "\n" not in str(exc.value)


def test_an_option_that_quantizes_inputs_is_refused_on_an_embedding(minilm_path):
    layers = inspect_model(ModelConfig(name=minilm_path)).layers
    with pytest.raises(SpecError, match=r"w8a8-int8 cannot be applied to layer "
                                        r"embeddings\.word_embeddings: .*token ids") as exc:
        build_space(layers, [LayerRule(WORD, (parse_option("w8a8-int8"),))])
    assert "\n" not in str(exc.value)
    # the same option on a linear layer is a valid space
    build_space(layers, [LayerRule(r"encoder\.layer\.0\.", (parse_option("w8a8-int8"),))])


def test_compressed_tensors_refuses_a_quantized_embedding_in_one_line(minilm_path, scored_trial,
                                                                      tmp_path):
    """compressed-tensors packs an embedding, but transformers' loader initialises every
    nn.Embedding through its ``.weight`` (gone once packed): the export refuses, writing nothing;
    the embedding at fp16 beside quantized layers exports."""
    from mpsearch.workers.export_ct import ExportError, export_compressed_tensors

    quantized = (LayerRule(f"^{WORD}$", (parse_option("int4-g32-asym-gptq"),)),)
    worker, options, _, _ = scored_trial(minilm_path, "embedding_distortion", "float32",
                                         ("int4-g32-asym",), first_rules=quantized)
    with pytest.raises(ExportError, match=rf"layer {WORD}: option int4-g32-asym-gptq cannot be "
                                          r"exported to compressed-tensors: it is an embedding"
                       ) as exc:
        export_compressed_tensors(worker.setup, options, tmp_path / "ct")
    assert "\n" not in str(exc.value) and not (tmp_path / "ct").exists()
    dense = (LayerRule(f"^{WORD}$", (parse_option("fp16"),)),)
    worker, options, _, _ = scored_trial(minilm_path, "embedding_distortion", "float32",
                                         ("int4-g32-asym",), first_rules=dense)
    assert options[WORD].label == "fp16"
    export_compressed_tensors(worker.setup, options, tmp_path / "ct")


def test_the_batched_level_build_gives_an_embedding_its_round_to_nearest_grid(tiny_llama_path):
    """The level database's batched GPTQ (every layer of a shape at once) on a Llama whose untied
    embed_tokens is searched beside its layers: the embedding's GPTQ levels are its RTN grids."""
    from mpsearch.workers.level_build import build_task_, plan_tasks
    from mpsearch.workers.level_db import stored_option

    labels = ["int4-g32-asym-gptq", "int3-g32-sym-clip-gptq-act", "int4-g32-asym",
              "int3-g32-sym-clip"]
    info = inspect_model(ModelConfig(name=tiny_llama_path))
    space = build_space(info.layers, [LayerRule(r"embed_tokens|layers\.\d+\.",
                                                tuple(map(parse_option, labels)))])
    worker = Worker(scoring_setup(tiny_llama_path, "auto", "kl", CAL, "float32"), space)
    pairs = [(layer.name, o) for gene in space.genes for layer in gene.layers
             for o in gene.options if stored_option(o)]
    shapes = {n: tuple(w.shape) for n, w in worker.original.items()}
    for share in plan_tasks(pairs, shapes, 2):
        for task in share:
            build_task_(worker, task)
    built = {(n, label) for n, label in worker.computed}
    name = "model.embed_tokens"
    for rtn, gptq in (("int4-g32-asym", "int4-g32-asym-gptq"),
                      ("int3-g32-sym-clip", "int3-g32-sym-clip-gptq-act")):
        assert (name, gptq) in built
        assert torch.equal(worker.cache.get((name, parse_option(gptq))),
                           worker.variant(name, parse_option(rtn))), gptq
