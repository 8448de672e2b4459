"""The Ray actor: a thin shell that owns one :class:`Worker` per process.

Only this module of ``workers/`` imports Ray. The actor adds nothing but identity (which node and
process scored a trial) and turns an exception inside one evaluation into a failed outcome, so a
bad candidate fails its trial while a dead process is seen by the caller as a dead worker.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any

import ray

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from .profile import ProfileMeasurement, measure_profile
from .sharding import worker_diagnostics
from .worker import EvalOutcome, Worker, WorkerSetup


@ray.remote
class WorkerActor:
    def __init__(self, setup: WorkerSetup, space: SearchSpace, label: str) -> None:
        self.label = f"{label}@{socket.gethostname()}:{os.getpid()}"
        self.worker = Worker(setup, space)

    def name(self) -> str:
        return self.label

    def placement(self) -> list[str]:
        """Where the model's parts went, one line per device (empty for one device)."""
        placement = self.worker.placement
        return placement.lines() if placement is not None else []

    def diagnostics(self, forward_repeats: int = 0) -> dict[str, Any]:
        """Memory per device, and the seconds of a plain forward pass (benchmarks)."""
        return worker_diagnostics(self.worker, forward_repeats)

    def evaluate(self, candidate: Candidate) -> tuple[str, EvalOutcome]:
        start = time.perf_counter()
        try:
            return self.label, self.worker.evaluate(candidate)
        except Exception as exc:  # one candidate's failure, not the worker's death
            last = traceback.format_exception_only(exc)[-1].strip()
            return self.label, EvalOutcome(None, time.perf_counter() - start, last)

    def profile(self, pairs: list[tuple[str, QuantOption]], samples: int | None = None,
                hessians: bool = True) -> tuple[str, list[ProfileMeasurement]]:
        """Sensitivity of each (gene, option) of ``pairs`` (see :mod:`.profile`)."""
        start = time.perf_counter()
        try:
            return self.label, measure_profile(self.worker, pairs, samples, hessians)
        except Exception as exc:  # these pairs fail, the worker lives on
            last = traceback.format_exception_only(exc)[-1].strip()
            seconds = time.perf_counter() - start
            return self.label, [ProfileMeasurement(g, o, None, None, None, None, seconds, last)
                                for g, o in pairs]
