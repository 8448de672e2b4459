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
from dataclasses import replace
from typing import Any

import ray

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from .fisher import fisher_diagonals, fisher_error, kfac_error, output_fisher
from .level_build import BuildTask, build_task_
from .profile import ProfileMeasurement, layer_proxy, measure_profile
from .sharding import worker_diagnostics
from .worker import EvalOutcome, Worker, WorkerSetup


@ray.remote
class WorkerActor:
    def __init__(self, setup: WorkerSetup, space: SearchSpace, label: str) -> None:
        """Load the model now, or, with ``setup.phased``, when the driver runs the setup phases
        (:mod:`mpsearch.cluster.warmup`) or the first evaluation arrives (a replacement)."""
        self.label = f"{label}@{socket.gethostname()}:{os.getpid()}"
        self.setup, self.space = replace(setup, label=self.label), space
        self._worker: Worker | None = None
        self._fisher: dict[str, Any] | None = None  # Fisher diagonals, once asked for
        self._kfac: dict[str, Any] | None = None  # output-gradient squares, once asked for
        if not setup.phased:
            self._worker = Worker(self.setup, space)

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            self.load_model()
        assert self._worker is not None
        if not self._worker.ready:
            self._worker.compute_reference()
        return self._worker

    def name(self) -> str:
        return self.label

    def placement(self) -> list[str]:
        """Where the model's parts went, one line per device (empty for one device)."""
        placement = self.worker.placement
        return placement.lines() if placement is not None else []

    def diagnostics(self, forward_repeats: int = 0) -> dict[str, Any]:
        """Memory per device, and the seconds of a plain forward pass (benchmarks)."""
        return worker_diagnostics(self.worker, forward_repeats)

    # -- setup phases (see mpsearch.cluster.warmup); each returns its seconds ------------------
    def load_model(self) -> float:
        start = time.perf_counter()
        if self._worker is None:
            self._worker = Worker(self.setup, self.space, defer_reference=True)
        return time.perf_counter() - start

    def compute_reference(self) -> float:
        start = time.perf_counter()
        _ = self.worker
        return time.perf_counter() - start

    def gather_statistics(self, names: list[str]) -> float:
        start = time.perf_counter()
        if names:
            self.worker.gather_statistics(names)
        return time.perf_counter() - start

    def build(self, task: BuildTask) -> dict[str, int]:
        """The variants of ``task`` (see :mod:`.level_build`): layers computed per option label."""
        done: dict[str, int] = {}
        build_task_(self.worker, task,
                    lambda option, n: done.__setitem__(option.label, done.get(option.label, 0) + n))
        return done

    def routing(self) -> dict[str, float]:
        """Layer → fraction of calibration tokens routed to its expert (:meth:`Worker.routing`)."""
        return self.worker.routing()

    def layer_proxies(self, pairs: list[tuple[str, QuantOption]],
                      kind: str = "hessian") -> dict[tuple[str, str], float]:
        """The proxy error of each (layer, option), by (layer, option label): the Hessian-weighted
        output error, or with ``kind="fisher"`` ½ΣF·ΔW² (the Fisher diagonal computed once)."""
        if kind == "kfac":
            if self._kfac is None:
                self._kfac = output_fisher(self.worker)
            worker, S = self.worker, self._kfac
            return {(name, option.label): kfac_error(
                S[name], worker.hessian(name), worker.original[name],
                worker.variant(name, option).to(worker.original[name].device))
                for name, option in pairs}
        if kind == "fisher":
            if self._fisher is None:
                self._fisher = fisher_diagonals(self.worker)
            worker, diag = self.worker, self._fisher
            return {(name, option.label): fisher_error(
                diag[name], worker.original[name],
                worker.variant(name, option).to(worker.original[name].device))
                for name, option in pairs}
        return {(name, option.label): layer_proxy(self.worker, name, option)
                for name, option in pairs}

    def flush_levels(self, wait: bool = True) -> list[tuple[str, str]]:
        """Free the statistics; with ``wait``, return once this worker's level-database writes
        are on disk (else they go on in the background). Returns the (layer, option label) of
        every stored-kind variant this worker computed."""
        worker = self.worker
        worker.release_statistics()
        if worker.levels is not None:
            worker.levels.start_writing()
            if wait:
                worker.levels.flush()
        return list(worker.computed)

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
