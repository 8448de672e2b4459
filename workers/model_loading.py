"""Resolving a model name, telling its kind, and loading it (really, or as shapes only).

The driver only needs layer shapes to build the search space, so it instantiates the model on the
meta device from its config (no weights read); workers load the weights once and keep them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.kv_cache import AttentionInfo
from mpsearch.spaces.space import LayerInfo

from .config import ModelConfig
from .errors import ModelNotFoundError
from .layers import discover_attention, discover_layers
from .model_paths import resolve_model_path


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs about a model: where it is, its kind, its layers and size."""

    path: str
    kind: str  # "causal-lm" or "encoder"
    layers: tuple[LayerInfo, ...]
    total_params: int
    # Longest input in tokens (the config's position embeddings); None when the config says none.
    max_positions: int | None = None
    # Attention layers with a KV cache (a causal LM's; an encoder keeps none): workers/layers.py
    attention: tuple[AttentionInfo, ...] = ()

    def check_seq_len(self, seq_len: int, name: str) -> None:
        """SpecError when calibration samples of ``seq_len`` tokens cannot go through the model."""
        if self.max_positions is not None and seq_len > self.max_positions:
            raise SpecError(f"calibration.seq_len: {seq_len} tokens is more than model "
                            f"{name!r} takes ({self.max_positions} positions); "
                            f"give at most {self.max_positions}")


def load_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model {path!r} cannot be loaded: {first}") from None


def detect_kind(config, requested: str) -> str:
    """``causal-lm`` when the architecture predicts next tokens, else ``encoder``."""
    if requested != "auto":
        return requested
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return "encoder"


def _auto_class(kind: str):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if kind == "causal-lm" else AutoModel


def inspect_model(cfg: ModelConfig) -> ModelInfo:
    """Layer shapes and parameter count, from the config alone (meta device, no weights read)."""
    path = resolve_model_path(cfg.name)
    config = load_config(path)
    kind = detect_kind(config, cfg.kind)
    with torch.device("meta"):
        model = _auto_class(kind).from_config(config)
    total = sum(p.numel() for p in model.parameters())
    attention = discover_attention(model, config) if kind == "causal-lm" else ()
    return ModelInfo(path, kind, tuple(discover_layers(model)), total, max_positions(config),
                     attention)


def max_positions(config) -> int | None:
    """The longest input the config allows (``max_position_embeddings`` or GPT-2's
    ``n_positions``); rotary models list theirs too. None when it names none."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(path: str, kind: str, dtype: str, device: str) -> nn.Module:
    """The model with its weights, in eval mode, on ``device``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # with accelerate, the weights are read straight onto the GPU (an 8B model: no 16 GB detour
    # through host memory)
    direct = device.startswith("cuda") and importlib.util.find_spec("accelerate") is not None
    extra = {"device_map": device} if direct else {}
    try:
        model = _auto_class(kind).from_pretrained(path, dtype=getattr(torch, dtype), **extra)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model {path!r} cannot be loaded: {first}") from None
    return model.to(device).eval()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # causal LMs often ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
