"""The ``mpsearch`` command line (typer + rich).

Errors a user can cause (``MpsearchError``) are printed as one line on stderr with exit code 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mpsearch.spaces.errors import MpsearchError
from mpsearch.storage.store import DEFAULT_URL, StudyRecord, TrialRecord, TrialStore

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Search per-layer mixed-precision configurations of neural networks.")
out = Console()
err = Console(stderr=True)

DbOption = Annotated[str, typer.Option(
    "--db", envvar="MPSEARCH_DB",
    help="SQLAlchemy URL or SQLite path of the store (default: the spec's, or ./mpsearch.db).")]
StudyOption = Annotated[str, typer.Option("--study", help="Study name.")]


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _fmt_obj(x: float | None) -> str:
    return "—" if x is None else f"{x:.6f}"


def results_table(study: StudyRecord, best: list[TrialRecord],
                  baselines: list[TrialRecord]) -> Table:
    title = f"study {study.name}: best configurations and uniform baselines"
    table = Table(title=title, title_justify="left")
    for col, justify in (("rank", "right"), ("trial", "right"), ("avg bits", "right"),
                         ("bytes", "right"), ("objective", "right"), ("layers", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, t in enumerate(best, 1):
        table.add_row(str(rank), str(t.number), f"{t.avg_bits:.4f}", _fmt_bytes(t.total_bytes),
                      _fmt_obj(t.objective), study.space.summarize(t.candidate))
    if baselines:
        table.add_section()
        for t in baselines:
            label = study.space.decode(t.candidate)
            name = next(iter(label.values())).label
            mark = "" if t.feasible else " (over budget)"
            table.add_row("uniform", str(t.number), f"{t.avg_bits:.4f}",
                          _fmt_bytes(t.total_bytes), _fmt_obj(t.objective), f"{name}{mark}")
    return table


def _trial_json(study: StudyRecord, t: TrialRecord) -> dict:
    return {
        "trial": t.number, "objective": t.objective, "avg_bits": t.avg_bits,
        "total_bytes": t.total_bytes, "origin": t.origin, "worker": t.worker,
        "layers": {name: o.label for name, o in study.space.decode(t.candidate).items()},
    }


@app.command()
def run(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Job spec (YAML).")],
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; default: RAY_ADDRESS, else a new local instance.")] = None,
    top: Annotated[int, typer.Option(help="Best configurations to show at the end.")] = 5,
) -> None:
    """Run a search job (or continue the study it names) and show the best configurations."""
    from mpsearch.cluster.job import run_job
    from mpsearch.cluster.spec import load_spec

    spec = load_spec(spec_path)
    store = TrialStore(spec.storage.url)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
                        TimeElapsedColumn(), console=err)
    task = progress.add_task(spec.study, total=spec.evaluations, best="—")
    already = 0

    def on_start(study: StudyRecord, done: int) -> None:
        nonlocal already
        already = done
        if done:
            err.print(f"study {study.name}: continuing from {done} stored trials")
        progress.update(task, completed=done)
        progress.start()

    def on_result(stats, _candidate, _outcome) -> None:
        progress.update(task, completed=already + stats.completed, best=_fmt_obj(stats.best))

    try:
        result = run_job(spec, store, address, on_start=on_start, on_result=on_result)
    finally:
        progress.stop()
    stats = result.stats
    err.print(f"{result.resumed_trials + stats.completed} completed, {stats.failed} failed, "
              f"{result.seconds:.1f} s ({stats.stopped_because or 'nothing left to run'}); "
              f"store {store.masked_url}", highlight=False)
    out.print(results_table(result.study, store.best(spec.study, top=top),
                            store.baselines(spec.study)))


@app.command()
def best(
    study: StudyOption,
    db: DbOption = DEFAULT_URL,
    top: Annotated[int, typer.Option(help="How many configurations.")] = 5,
    max_bits: Annotated[float | None, typer.Option(help="Only trials at most this avg bits.")] = None,
    max_bytes: Annotated[float | None, typer.Option(help="Only trials at most this size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, with per-layer choices.")] = False,
) -> None:
    """The best stored configurations of a study (feasible, completed, lowest objective)."""
    store = TrialStore(db, create=False)
    record = store.study(study)
    rows = store.best(study, top=top, max_bits=max_bits, max_bytes=max_bytes)
    if not rows:
        raise MpsearchError(f"study {study!r} has no completed trial within the filters")
    if as_json:
        out.print_json(json.dumps([_trial_json(record, t) for t in rows]))
        return
    out.print(results_table(record, rows, store.baselines(study)))


@app.command()
def trials(
    study: StudyOption,
    out_path: Annotated[str, typer.Option("--out", help="Parquet file to write.")],
    db: DbOption = DEFAULT_URL,
) -> None:
    """Export every trial of a study to Parquet (one row per trial, a column per layer)."""
    from mpsearch.storage.export import write_parquet

    store = TrialStore(db, create=False)
    record = store.study(study)
    rows = store.trials(study)
    path = write_parquet(record, rows, out_path)
    err.print(f"wrote {len(rows)} trials of study {study} to {path}")


def main() -> None:
    """Console entry point: one line on stderr and exit 1 for any error a user can cause."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except MpsearchError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted: trials recorded so far are kept in the store")
        sys.exit(130)


if __name__ == "__main__":
    main()
