"""``mpsearch profile``: measure (or read back) the sensitivity profile of a job spec's space.

A thin command over :mod:`mpsearch.cluster.profiling` (which measures on the search's executor and
stores the rows as they arrive); this module prints the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .output import err, out

if TYPE_CHECKING:
    from mpsearch.spaces.space import SearchSpace

    from ..profiling import ProfileResult


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
    from mpsearch.storage.store import TrialStore

    from ..job import prepare, worker_setup
    from ..profiling import ray_measure, run_profile
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

