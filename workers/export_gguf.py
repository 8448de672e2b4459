"""Exporting a plan as one GGUF file (llama.cpp's format), written with gguf-py's own writer, names
from gguf's own tensor name map, architecture metadata and the tokenizer's vocabulary.

Per tensor, the type the plan chose: GGUF's block options (``q4_0`` … ``q8_0``) are written by
gguf-py's quantizer from the original weight, and checked to dequantize bit for bit to the weight
the trial scored; ``int4-g32-sym`` and ``int8-g32-sym`` are the same numbers as Q4_0 and Q8_0 and
are packed from mpsearch's own codes and fp16 scales; ``mxfp4`` is packed from its E2M1 values
and power-of-two scales into ggml's MXFP4 blocks (an E8M0 exponent and 16 bytes of codes per 32;
gguf-py's own MXFP4 quantizer breaks ties differently, so it is not used); ``fp16`` layers are
F16. Everything the plan does not name keeps the trial's dtype (F32, F16 or BF16), as it was
scored. Any other option is refused before anything is written, naming the layer and the option.

llama.cpp's converter permutes Llama's q/k rows for its rotary layout (and loaders undo it); the
same permutation is applied here. GPT-2's Conv1D weights are written out × in, as llama.cpp does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.runtime import gguf_type

from .checkpoint import CheckpointError, _planned_modules, plan_worker
from .export_ct import ExportError, require
from .formats import E2M1_GRID, GGUF_BLOCK
from .layers import Target, get_weight
from .registry import Encoded
from .worker import WorkerSetup

ARCHITECTURES = {"llama": "llama", "gpt2": "gpt2"}  # config.model_type → gguf architecture
NATIVE = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")  # GGUF's own block formats, by gguf's quantizer
__all__ = ["export_gguf", "gguf_tensor_bytes", "gguf_type", "gguf_types"]


def gguf_types(options: Mapping[str, QuantOption]) -> dict[str, str]:
    """Layer → GGUF type, or :class:`ExportError` naming the first layer it cannot hold."""
    types = {}
    for name, option in options.items():
        kind = gguf_type(option)
        if kind is None:
            raise ExportError(f"layer {name}: option {option.label} cannot be exported to GGUF: "
                              "GGUF holds q4_0, q4_1, q5_0, q5_1, q8_0, mxfp4, int4-g32-sym, "
                              "int8-g32-sym and fp16 exactly")
        types[name] = kind
    return types


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _pack_q4_0(enc: Encoded) -> np.ndarray:
    """Q4_0 blocks (fp16 d, then 16 bytes: code j in the low nibble, code j + 16 in the high one)
    from symmetric 4-bit codes c ∈ [−8, 7] with one scale per 32: ŵ = d · c."""
    assert enc.scale is not None
    codes = (enc.values.reshape(-1, GGUF_BLOCK) + 8).to(torch.uint8).numpy()
    qs = codes[:, :16] | (codes[:, 16:] << np.uint8(4))
    d = enc.scale.reshape(-1, 1).numpy().astype(np.float16).view(np.uint8)
    return np.concatenate([d, qs], axis=1).reshape(enc.values.shape[0], -1)


def _pack_q8_0(enc: Encoded) -> np.ndarray:
    """Q8_0 blocks (fp16 d, then 32 int8 codes) from symmetric 8-bit codes: ŵ = d · c."""
    assert enc.scale is not None
    if enc.values.min() < -127:
        raise ExportError(f"option {enc.option.label}: a code of −128 has no Q8_0 encoding")
    codes = enc.values.reshape(-1, GGUF_BLOCK).to(torch.int8).numpy().view(np.uint8)
    d = enc.scale.reshape(-1, 1).numpy().astype(np.float16).view(np.uint8)
    return np.concatenate([d, codes], axis=1).reshape(enc.values.shape[0], -1)


def _pack_mxfp4(enc: Encoded) -> np.ndarray:
    """ggml's MXFP4 blocks (an E8M0 exponent e, then 16 bytes: code j in the low nibble, code
    j + 16 in the high one; ŵ = 2^(e − 127) · E2M1[code], codes 8–15 negative) from mpsearch's
    E2M1 values and power-of-two scales per 32."""
    assert enc.scale is not None
    grid = torch.tensor(E2M1_GRID)
    values = enc.values.reshape(-1, GGUF_BLOCK)
    magnitude = torch.bucketize(values.abs(), grid)  # exact: every value is on the grid
    assert torch.equal(grid[magnitude], values.abs())
    codes = (magnitude + 8 * (values < 0)).to(torch.uint8).numpy()
    qs = codes[:, :16] | (codes[:, 16:] << np.uint8(4))
    _, exp = torch.frexp(enc.scale.reshape(-1, 1))  # scale = 2^(exp − 1)
    e = (exp - 1 + 127).to(torch.uint8).numpy()
    return np.concatenate([e, qs], axis=1).reshape(enc.values.shape[0], -1)


def _tokenizer_metadata(writer: Any, model_path: str) -> None:
    """The vocabulary (ids in order), its model (``gpt2`` BPE with merges, else ``bert``
    WordPiece) and the special token ids."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        if i < len(tokens):
            tokens[i] = text
    special = set(tok.all_special_ids)
    backend = getattr(tok, "backend_tokenizer", None)
    state = backend.model.__class__.__name__ if backend is not None else ""
    writer.add_tokenizer_model("gpt2" if state == "BPE" else "bert")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    for attr, add in (("bos_token_id", writer.add_bos_token_id),
                      ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id),
                      ("sep_token_id", writer.add_sep_token_id),
                      ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            add(value)


def _architecture_metadata(writer: Any, config: Any) -> None:
    if config.model_type == "llama":
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        head_dim = getattr(config, "head_dim", None) or \
            config.hidden_size // config.num_attention_heads
        writer.add_rope_dimension_count(head_dim)
        rope = getattr(config, "rope_parameters", None) or {}
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta",
                                                                          10000.0))))
        writer.add_vocab_size(config.vocab_size)
    else:  # gpt2
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)


def export_gguf(setup: WorkerSetup, options: Mapping[str, QuantOption], out_path: str | Path,
                plan: Mapping[str, Any] | None = None) -> Path:
    """Apply ``options`` on ``setup`` and write them as one GGUF file at ``out_path``.

    Raises :class:`ExportError` (nothing written) for an architecture gguf does not map or an
    option GGUF cannot hold, :class:`CheckpointError` for an unwritable or existing path.
    """
    import json

    require("gguf", "gguf")
    import gguf
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(setup.model_path)
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ExportError(f"GGUF export maps {', '.join(ARCHITECTURES)} models; this one is "
                          f"{config.model_type!r}")
    types = gguf_types(options)
    out = Path(out_path)
    if out.exists():
        raise CheckpointError(f"output {out} exists; choose a new file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
    except OSError as exc:
        raise CheckpointError(f"cannot write GGUF to {out}: {exc.strerror or exc}") from None
    try:
        worker = plan_worker(setup, options)
        model = worker.model.cpu()
        modules = _planned_modules(model, options)
        writer = gguf.GGUFWriter(str(out), arch)
        writer.add_name(Path(setup.model_path).name)
        _architecture_metadata(writer, config)
        _tokenizer_metadata(writer, setup.model_path)
        if plan is not None:
            writer.add_string("mpsearch.plan", json.dumps(plan))
        for name, array, raw in _tensors(model, modules, types, worker, config):
            writer.add_tensor(name, array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except OSError as exc:
        out.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write GGUF to {out}: {exc.strerror or exc}") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def _tensors(model: nn.Module, modules: Mapping[str, Target], types: Mapping[str, str],
             worker: Any, config: Any):
    """(gguf name, array, raw type or None) for every tensor of ``model``, tied ones once."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == ARCHITECTURES[
        config.model_type])
    name_map = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    seen: set[int] = set()
    weight_of = {f"{n}.weight": n for n in types}
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # tied (GPT-2's lm_head is wte): the loader ties it back
        seen.add(tensor.data_ptr())
        base, _, suffix = key.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is None:
            raise ExportError(f"tensor {key} has no GGUF name in gguf's {config.model_type} map")
        gguf_name = f"{gguf_name}.{suffix}"
        layer = weight_of.get(key)
        if layer is None:
            module = model.get_submodule(base)
            if suffix == "weight" and _is_conv1d(module):
                tensor = get_weight(module)  # llama.cpp writes Conv1D weights out × in
            yield (gguf_name, *_dense(_qk(tensor.detach().numpy() if tensor.dtype != torch.bfloat16
                                          else tensor.detach().float().numpy(), gguf_name, config),
                                      tensor.dtype))
            continue
        yield (gguf_name, *_layer_tensor(layer, types[layer], worker, gguf_name, config))


def _dense(array: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, Any]:
    """An unplanned tensor in the trial's dtype: F32 and F16 as they are, BF16 packed by gguf."""
    import gguf

    if dtype != torch.bfloat16:
        return array, None
    kind = gguf.GGMLQuantizationType.BF16
    return gguf.quants.quantize(array, kind), kind


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def _qk(array: np.ndarray, gguf_name: str, config: Any) -> np.ndarray:
    if config.model_type != "llama" or array.ndim != 2:
        return array
    if ".attn_q." in gguf_name:
        return _permute_qk(array, config.num_attention_heads)
    if ".attn_k." in gguf_name:
        return _permute_qk(array, config.num_key_value_heads)
    return array


def _layer_tensor(layer: str, kind: str, worker: Any, gguf_name: str, config: Any):
    """(array, raw type) of a planned layer, checked to dequantize to the scored weight."""
    import gguf

    option = worker.current[layer]
    scored = worker.variant(layer, option).cpu()
    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F16":
        return _qk(scored.half().numpy(), gguf_name, config), None
    if option.format in NATIVE:
        data = gguf.quants.quantize(_qk(worker.original[layer].cpu().float().numpy(), gguf_name,
                                        config), qtype)
    else:
        enc = worker.encoded(layer, option)  # from the level database when it holds it
        pack = {"Q4_0": _pack_q4_0, "Q8_0": _pack_q8_0, "MXFP4": _pack_mxfp4}[kind]
        packed = pack(enc)
        data = _qk(packed, gguf_name, config)
    # what a loader computes (float32, then the model's dtype) is what the trial scored
    back = torch.from_numpy(gguf.quants.dequantize(data, qtype)).to(scored.dtype)
    assert torch.equal(back, torch.from_numpy(_qk(scored.float().numpy(), gguf_name, config))
                       .to(scored.dtype)), layer
    return data, qtype


def gguf_tensor_bytes(path: str | Path) -> int:
    """Bytes of the tensors in the GGUF file at ``path`` (what the cost model's total_bytes
    predicts; the file adds its metadata and the tokenizer's vocabulary)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
