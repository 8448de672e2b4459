"""Measuring a space's sensitivity profile on the search's own executor, and storing it.

For every (gene, option) of the space the profile holds the objective change when only that gene
is compressed, and two proxies (see :mod:`mpsearch.workers.profile`). Rows already stored for the
same model, calibration data and objective are read back, not measured; the rest are sent in
chunks to the workers of a :class:`ProfileExecutor`: the search's :class:`RayExecutor` with
another task, so a worker that dies is replaced and its chunk sent again exactly as a search's
candidate would be. Rows are stored as each chunk arrives, so an interrupted profile keeps what it
measured. ``mpsearch profile`` is a thin command over :func:`run_profile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from mpsearch.spaces.space import SearchSpace
from mpsearch.storage.profiles import ProfileKey, ProfileRecord, load_profile, save_profile
from mpsearch.storage.store import TrialStore
from mpsearch.workers.profile import Pair, ProfileMeasurement, profile_pairs
from mpsearch.workers.worker import WorkerSetup

from .executor import RayExecutor
from .job import PreparedJob, profile_key

# Measures pairs and yields (worker label, measurements) as each chunk completes.
Measure = Callable[[list[Pair]], Iterator[tuple[str, list[ProfileMeasurement]]]]


@dataclass(frozen=True)
class ProfileResult:
    key: ProfileKey
    rows: dict[tuple[str, str], ProfileRecord]  # every stored row of the key, after measuring
    reused: int  # rows of the space read back instead of measured
    measured: int  # rows measured (and stored) now
    failed: list[ProfileMeasurement]


def run_profile(job: PreparedJob, store: TrialStore, measure: Measure,
                samples: int | None = None,
                on_chunk: Callable[[int, int], None] | None = None) -> ProfileResult:
    """Measure the (gene, option) pairs of ``job``'s space that ``store`` lacks; store them."""
    key = profile_key(job, samples)
    stored = load_profile(store, key)
    pairs = profile_pairs(job.space)
    missing = [(g, o) for g, o in pairs if (g, o.label) not in stored]
    measured, failed = 0, []
    for label, rows in (measure(missing) if missing else iter(())):
        measured += save_profile(store, key, rows, worker=label)
        failed += [r for r in rows if r.value is None]
        if on_chunk is not None:
            on_chunk(measured + len(failed), len(missing))
    return ProfileResult(key, load_profile(store, key), len(pairs) - len(missing), measured, failed)


class ProfileExecutor(RayExecutor):
    """The search's executor whose items are chunks of pairs, measured by ``WorkerActor.profile``.

    :meth:`collect` reports ``(label, measurements)`` per chunk; a chunk that kept killing
    workers is reported as failed measurements carrying the reason.
    """

    item = "chunk"
    max_batch = 1  # a chunk is already a batch of pairs

    def __init__(self, setup: WorkerSetup, space: SearchSpace, count: int, cpus: float,
                 gpus: float, samples: int | None, hessians: bool, **options: Any) -> None:
        self.samples, self.hessians = samples, hessians
        super().__init__(setup, space, count, cpus, gpus, **options)

    def _call(self, actor: Any, candidate: Any) -> Any:
        return actor.profile.remote(candidate, self.samples, self.hessians)

    def _outcome(self, label: str, result: Any) -> Any:
        return label, result

    def _failed(self, candidate: Any, reason: str) -> Any:
        return "", [ProfileMeasurement(g, o, None, None, None, None, 0.0, reason)
                    for g, o in candidate]


def ray_measure(setup: WorkerSetup, space: SearchSpace, count: int, cpus: float, gpus: float,
                address: str | None, samples: int | None, hessians: bool = True,
                chunk: int = 8) -> Measure:
    """A :data:`Measure` spreading chunks of pairs over ``count`` Ray worker actors (chunks small
    enough that every worker gets about two, so none idles while one finishes)."""

    def measure(pairs: list[Pair]) -> Iterator[tuple[str, list[ProfileMeasurement]]]:
        from .ray_runtime import connect

        connect(address, num_cpus=max(int(count * cpus), 1))
        size = max(1, min(chunk, math.ceil(len(pairs) / (2 * count))))
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        executor = ProfileExecutor(setup, space, min(count, len(chunks)), cpus, gpus, samples,
                                   hessians)
        try:
            for key, batch in enumerate(chunks):
                executor.submit(key, batch)  # type: ignore[arg-type]
            left = len(chunks)
            while left:
                for _key, outcome in executor.collect():  # this executor's outcome: a chunk
                    left -= 1
                    yield cast(tuple[str, list[ProfileMeasurement]], outcome)
        finally:
            executor.shutdown()

    return measure
