"""``mpsearch profile``: measure (or read back) the sensitivity profile of a job spec's space.

For every (gene, option) of the space it reports the objective change when only that gene is
compressed and two proxies (see :mod:`mpsearch.workers.profile`). Rows already stored for the same
model, calibration data and objective are read back, not measured; the rest are spread over the
spec's Ray workers in chunks (every worker busy until none is left) and stored as they arrive, so
an interrupted profile keeps what it measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table

from mpsearch.spaces.space import SearchSpace
from mpsearch.storage.profiles import (
    ProfileKey,
    ProfileRecord,
    load_profile,
    save_profile,
)
from mpsearch.storage.store import TrialStore
from mpsearch.workers.errors import WorkerError
from mpsearch.workers.profile import Pair, ProfileMeasurement, profile_pairs
from mpsearch.workers.worker import WorkerSetup

from ..job import PreparedJob, profile_key
from .output import err, out

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


def ray_measure(setup: WorkerSetup, space: SearchSpace, count: int, cpus: float, gpus: float,
                address: str | None, samples: int | None, hessians: bool = True,
                chunk: int = 8) -> Measure:
    """A :data:`Measure` spreading chunks of pairs over ``count`` Ray worker actors."""

    def measure(pairs: list[Pair]) -> Iterator[tuple[str, list[ProfileMeasurement]]]:
        import ray
        from ray.exceptions import RayError

        from mpsearch.workers.actor import WorkerActor

        from ..ray_runtime import connect

        connect(address, num_cpus=max(int(count * cpus), 1))
        size = max(1, min(chunk, math.ceil(len(pairs) / (2 * count))))
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        actors = [WorkerActor.options(num_cpus=cpus, num_gpus=gpus).remote(setup, space, f"p{i}")
                  for i in range(min(count, len(chunks)))]
        try:
            try:
                ray.get([a.name.remote() for a in actors])
            except RayError as exc:
                raise WorkerError(f"profile worker failed to start: {str(exc).strip()[-300:]}") \
                    from None
            running = {}
            for actor in actors:
                if chunks:
                    batch = chunks.pop(0)
                    running[actor.profile.remote(batch, samples, hessians)] = (actor, batch)
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, batch = running.pop(ref)
                try:
                    yield ray.get(ref)
                except RayError as exc:  # the worker died: its chunk fails, the rest go on
                    reason = f"worker died: {str(exc).strip().splitlines()[-1][:300]}"
                    yield "", [ProfileMeasurement(g, o, None, None, None, None, 0.0, reason)
                               for g, o in batch]
                    continue
                if chunks:
                    batch = chunks.pop(0)
                    running[actor.profile.remote(batch, samples, hessians)] = (actor, batch)
        finally:
            for actor in actors:
                ray.kill(actor)

    return measure


def _fmt(x: float | None, spec: str = ".3e") -> str:
    return "—" if x is None else format(x, spec)


def profile_table(space: SearchSpace, result: ProfileResult) -> Table:
    table = Table(title=f"sensitivity profile ({result.key.objective}; {result.reused} stored, "
                        f"{result.measured} measured now)", title_justify="left")
    for col in ("gene", "option", "bits", "objective", "Δ objective", "‖W−Ŵ‖²", "tr(ΔHΔᵀ)"):
        table.add_column(col, justify="left" if col in ("gene", "option") else "right")
    for gene in space.genes:
        in_features = gene.layers[0].in_features
        for option in gene.options:
            row = result.rows.get((gene.name, option.label))
            if row is None:
                table.add_row(gene.name, option.label, f"{option.effective_bits(in_features):.3f}",
                              "failed", "", "", "")
                continue
            table.add_row(gene.name, option.label, f"{option.effective_bits(in_features):.3f}",
                          _fmt(row.value, ".6f"), _fmt(row.delta, ".6f"), _fmt(row.weight_error),
                          _fmt(row.hessian_error))
    return table


def profile(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Job spec (YAML).")],
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; default: RAY_ADDRESS, else a new local instance.")] = None,
    samples: Annotated[int | None, typer.Option(
        help="Score on the first N calibration samples only (a cheaper, separate profile).")] = None,
    hessian_proxy: Annotated[bool, typer.Option(
        help="Also compute tr((W−Ŵ)H(W−Ŵ)ᵀ) (one extra calibration pass per worker).")] = True,
) -> None:
    """Measure each (layer, option)'s sensitivity on all workers, reusing stored rows; print it."""
    from ..job import prepare, worker_setup
    from ..spec import load_spec

    spec = load_spec(spec_path)
    job = prepare(spec)
    store = TrialStore(spec.storage.url)
    w = spec.workers
    measure = ray_measure(worker_setup(job), job.space, w.count, w.cpus, w.gpus, address,
                          samples, hessian_proxy)

    def progress(done: int, total: int) -> None:
        err.print(f"profile: {done}/{total} measured", highlight=False)

    result = run_profile(job, store, measure, samples, on_chunk=progress)
    out.print(profile_table(job.space, result))
    err.print(f"{result.reused} rows reused, {result.measured} measured, {len(result.failed)} "
              f"failed; store {store.masked_url}", highlight=False)
    for m in result.failed[:5]:
        err.print(f"  failed {m.layer} {m.option.label}: {m.error}", highlight=False)

