"""Reading results back: ``best`` and ``trials`` (Parquet export)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mpsearch.spaces.errors import MpsearchError
from mpsearch.storage.store import TrialStore

from .cli_output import DEFAULT_DB, DbOption, StudyOption, err, out, results_table, trial_json


def best(
    study: StudyOption,
    db: DbOption = DEFAULT_DB,
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
        out.print_json(json.dumps([trial_json(record, t) for t in rows]))
        return
    out.print(results_table(record, rows, store.baselines(study)))


def trials(
    study: StudyOption,
    out_path: Annotated[str, typer.Option("--out", help="Parquet file to write.")],
    db: DbOption = DEFAULT_DB,
) -> None:
    """Export every trial of a study to Parquet (one row per trial, a column per layer)."""
    from mpsearch.storage.export import write_parquet

    store = TrialStore(db, create=False)
    record = store.study(study)
    rows = store.trials(study)
    path = write_parquet(record, rows, out_path)
    err.print(f"wrote {len(rows)} trials of study {study} to {path}")


