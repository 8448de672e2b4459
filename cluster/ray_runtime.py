"""Connecting to Ray: a local instance when no address is given, else an existing cluster.

Token authentication stays as Ray sets it (on by default since Ray 2.60): a local instance
generates its token in ~/.ray/auth_token, and a remote cluster's token is read the way Ray
documents (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH). mpsearch never turns it off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import ClusterError


def connect(address: str | None = None, num_cpus: int | None = None,
            num_gpus: int | None = None) -> None:
    """Initialize Ray once per process (a no-op when this process is already connected)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": always a new instance, never one found through /tmp/ray (another user's)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = address or "a local instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"cannot connect to Ray at {where}: {first}") from None
    except Exception as exc:  # Ray's own error types (e.g. AuthenticationError)
        if type(exc).__module__.startswith("ray"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"cannot connect to Ray at {address or 'local'}: {first}") from None
        raise
    from .signals import reinstall

    reinstall()  # ray.init replaced the SIGTERM handler with one that exits mid-cleanup


def connect_for(spec: Any, address: str | None) -> None:
    """Connect to Ray (or start a local instance big enough for the ``JobSpec``'s workers)."""
    w = spec.workers
    connect(address, num_cpus=max(int(w.count * w.cpus), 1), num_gpus=None)
