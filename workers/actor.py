"""The Ray actor: a thin shell that owns one :class:`Worker` per process.

Only this module of ``workers/`` imports Ray. The actor adds nothing but identity (which node and
process scored a trial) and turns an exception inside one evaluation into a failed outcome, so a
bad candidate fails its trial while a dead process is seen by the caller as a dead worker.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any

import ray
import torch

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from .fisher import fisher_diagonals, fisher_error, kfac_error, output_fisher
from .level_build import BuildTask, build_task_
from .model_loading import detect_kind, load_config, load_model
from .profile import ProfileMeasurement, layer_proxy, measure_profile
from .sharding import worker_diagnostics
from .worker import EvalOutcome, Worker, WorkerSetup


class BatchEvaluation:
    """``evaluate_many`` for an actor with ``evaluate(candidate) -> (label, outcome)``: several
    candidates in one call, in order, each failing alone, with the seconds the call took here
    (what the executor weighs against the call's round trip to size its batches)."""

    label: str

    def evaluate(self, candidate: Candidate) -> tuple[str, EvalOutcome]:
        raise NotImplementedError

    def evaluate_many(self, candidates: list[Candidate]) -> tuple[str, list[EvalOutcome], float]:
        start = time.perf_counter()
        outcomes = [self.evaluate(candidate)[1] for candidate in candidates]
        return self.label, outcomes, time.perf_counter() - start


@dataclass(frozen=True)
class ModelPreload:
    """The model a worker can start loading before its job is prepared (``mpsearch run`` starts
    its workers while the driver still inspects the model, see :mod:`mpsearch.cluster.prestart`):
    the spec's model name resolved to its path, the kind asked for ("auto" is resolved from the
    config here), dtype, one device, CPU threads."""

    model_path: str
    kind: str
    dtype: str
    device: str
    threads: int | None = None


class _Preloading(threading.Thread):
    """Loads a :class:`ModelPreload` in the background (``load_model``, as the worker would);
    on an error nothing is kept, and the worker loads as if nothing had been preloaded (and
    reports the error in its own words)."""

    def __init__(self, preload: ModelPreload) -> None:
        super().__init__(name="mpsearch-preload", daemon=True)
        self.preload = preload
        self.key: tuple[str, str, str, str] | None = None  # (path, kind, dtype, device) loaded
        self.model: Any = None
        self.start()

    def run(self) -> None:
        p = self.preload
        try:
            if p.threads:
                torch.set_num_threads(p.threads)
            kind = detect_kind(load_config(p.model_path), p.kind)
            self.model = load_model(p.model_path, kind, p.dtype, p.device)
            self.key = (p.model_path, kind, p.dtype, p.device)
        except Exception:  # noqa: BLE001 - the worker's own load reports it, in its words
            self.model = None

    def take(self, setup: WorkerSetup) -> Any:
        """The preloaded model when it is the one ``setup`` loads (None otherwise: dropped)."""
        self.join()
        model, self.model = self.model, None
        wanted = (setup.model_path, setup.kind, setup.dtype, setup.device)
        if model is None or self.key != wanted or len(setup.devices) > 1 or setup.random_weights:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        return model


@ray.remote
class WorkerActor(BatchEvaluation):
    def __init__(self, setup: WorkerSetup | None, space: SearchSpace | None, label: str,
                 preload: ModelPreload | None = None) -> None:
        """Load the model now, or, with ``setup.phased``, when the driver runs the setup phases
        (:mod:`mpsearch.cluster.warmup`) or the first evaluation arrives (a replacement).
        ``preload`` (with no setup and space yet; :meth:`configure` gives them): start loading
        that model now, in the background, for the phase that loads it to take over."""
        self.label = f"{label}@{socket.gethostname()}:{os.getpid()}"
        self._worker: Worker | None = None
        self._fisher: dict[str, Any] | None = None  # Fisher diagonals, once asked for
        self._kfac: dict[str, Any] | None = None  # output-gradient squares, once asked for
        self._preloading = _Preloading(preload) if preload is not None else None
        self.preloaded = False  # whether the worker took the preloaded model
        if setup is not None and space is not None:
            self.configure(setup, space)

    def configure(self, setup: WorkerSetup, space: SearchSpace) -> None:
        """The worker's setup and space (given to the constructor, or later to an actor started
        with only a ``preload``)."""
        self.setup, self.space = replace(setup, label=self.label), space
        if not setup.phased:
            self._worker = self._make_worker(defer_reference=False)

    def _make_worker(self, defer_reference: bool) -> Worker:
        preloaded = self._preloading.take(self.setup) if self._preloading is not None else None
        self._preloading, self.preloaded = None, preloaded is not None
        return Worker(self.setup, self.space, model=preloaded, defer_reference=defer_reference)

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

    def took_preload(self) -> bool:
        """Whether this worker's model is the one its ``preload`` loaded (tests, benchmarks)."""
        return self.preloaded

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
        if self._worker is None:  # a preload still running is waited for
            self._worker = self._make_worker(defer_reference=True)
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
