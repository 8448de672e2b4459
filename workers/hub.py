"""Whether the Hugging Face Hub can be reached, asked before a download is tried: on a machine
without it, every hub client call retries the dead connection five times (about 25 s of
warnings) before it fails, in the driver and again in each worker."""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached now ("https://huggingface.co cannot be reached (...)"), or
    None: also when offline mode is on (the caches alone are asked) or a proxy stands between
    (it decides). One TCP connection to ``HF_ENDPOINT``, 5 s at most."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or urllib.request.getproxies():
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as exc:
        return f"{constants.ENDPOINT} cannot be reached ({exc.strerror or exc})"
    return None
