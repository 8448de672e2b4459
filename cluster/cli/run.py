"""``mpsearch run``: run a search job with a live progress bar, then show the best results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .output import err, fmt_obj, frontier_table, out, results_table
from .phases import PhaseDisplay

if TYPE_CHECKING:
    from mpsearch.searcher.registry import SearcherConfig
    from mpsearch.storage.store import StudyRecord, TrialStore

    from ..job import PreparedJob
    from ..spec import JobSpec


def run(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Job spec (YAML).")],
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; default: RAY_ADDRESS, else a new local instance.")] = None,
    top: Annotated[int, typer.Option(help="Best configurations to show at the end.")] = 5,
) -> None:
    """Run a search job (or continue the study it names) and show the best configurations."""
    from mpsearch.cluster.prestart import EarlyWorkers
    from mpsearch.cluster.spec import load_spec

    spec = load_spec(spec_path)
    # Ray and the workers start now: their imports and the model's weights load while this
    # process prepares the job (cluster/prestart.py)
    early = EarlyWorkers(spec, address)
    try:
        from mpsearch.cluster.job import prepare
        from mpsearch.cluster.latency import with_latency
        from mpsearch.cluster.mirror import check_mirror
        from mpsearch.storage.store import TrialStore

        job = prepare(spec)  # spec, model, space, budget, calibration: before the store is created
        job = with_latency(job, spec.storage.url, address, say=err.print)  # its table, if budgeted
        store = TrialStore(spec.storage.url)
        check_mirror(store, spec.study)  # a foreign Optuna study of the name: refused before the bar
        run_with_progress(spec, store, address, top, job=job, early=early)
    finally:
        early.close()


def run_with_progress(spec: JobSpec, store: TrialStore, address: str | None, top: int,
                      extend: int = 0, job: PreparedJob | None = None,
                      switch_to: SearcherConfig | None = None, early: Any = None) -> None:
    """Run (continue, extend) a study with a live progress bar, then print its best results."""
    from mpsearch.cluster.job import run_job

    # Before the first result, one line per setup phase (PhaseDisplay); then the search bar.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=err)
    phases = PhaseDisplay(progress, err)
    phases.phase("prepare", "preparing the job" if job is None else "opening the study", 0)
    task: TaskID | None = None
    already, stored_best = 0, None  # what the study held before this run
    evaluations = spec.evaluations + extend
    progress.start()

    def on_start(study: StudyRecord, done: int) -> None:
        nonlocal already, stored_best, evaluations
        already, evaluations = done, study.evaluations
        if done:
            err.print(f"study {study.name}: continuing from {done} stored trials")
            best = store.best(study.name, top=1)
            stored_best = best[0].objective if best else None

    def on_result(stats, candidate, _outcome) -> None:
        nonlocal task
        if candidate.origin.endswith(":probe"):
            phases.probe()
        if task is None:  # the search bar comes after the setup phases
            phases.phase("search", "searching", 0)  # every setup line is complete
            task = progress.add_task(spec.study, total=evaluations, completed=already, note="")
        known = [b for b in (stored_best, stats.best) if b is not None]
        progress.update(task, completed=already + stats.completed,
                        note=f"best {fmt_obj(min(known) if known else None)}")

    try:
        result = run_job(spec, store, address, on_start=on_start, on_result=on_result,
                         extend=extend, job=job, switch_to=switch_to, on_phase=phases,
                         early=early)
    except BaseException:
        # an error is the run's last word: the bar leaves no line behind it (on a file or pipe
        # Progress.stop prints the bar's final state and a newline, making a one-line error three)
        progress.live.transient = True
        progress.live.stop()
        raise
    finally:
        if progress.live.is_started:  # stopping a bar never shown prints a blank line
            progress.stop()
    stats = result.stats
    if result.requeued:
        err.print(f"re-dispatched {result.requeued} evaluations a stopped driver left in flight")
    if result.replay_note:
        err.print(f"warning: could not replay the stored search exactly ({result.replay_note}); "
                  "continued from the stored results")
    if result.mirror_note:
        err.print(f"warning: {result.mirror_note}", highlight=False)
    err.print(f"{result.resumed_trials + stats.completed} completed, {stats.failed} failed, "
              f"{result.seconds:.1f} s ({stats.stopped_because or 'nothing left to run'}); "
              f"store {store.masked_url}", highlight=False)
    out.print(results_table(result.study, store.best(spec.study, top=top),
                            store.baselines(spec.study)))
    if result.study.frontier:
        out.print(frontier_table(result.study, store.frontier(spec.study)))
