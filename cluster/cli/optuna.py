"""Optuna commands: ``import-optuna`` adopts an Optuna study as an mpsearch study; the commands that
open one study for more than a quick look (``status --study``, ``trials``, ``export``, ``report``;
``run`` and ``resume`` through the driver) bring its Optuna mirror up to the store first
(:func:`mirror_study`). ``best`` and ``pareto``, polled while a search runs, stay light: they
import neither Optuna nor anything else heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .output import err

if TYPE_CHECKING:
    from mpsearch.storage.store import TrialStore


def mirror_study(store: TrialStore, study: str) -> None:
    """Rebuild or complete the Optuna mirror of ``study`` unless a driver is running it (the
    driver keeps it in step); a mirror that cannot be written is a warning, not an error."""
    from ..mirror import sync_mirror

    sync_mirror(store, study, on_error=lambda msg: err.print(f"warning: {msg}", highlight=False),
                unless_driven=True)


def import_optuna(
    study_name: Annotated[str, typer.Option("--study-name", help="The Optuna study to adopt.")],
    storage: Annotated[str, typer.Option(
        "--storage", help="Its Optuna storage URL, e.g. sqlite:///hpo.db.")],
    spec_path: Annotated[str, typer.Option(
        "--spec", help="Job spec of the new mpsearch study: model, space (its layers must be the "
        "study's parameters, its options their choices), budget, strategy to resume with.")],
    db: Annotated[str | None, typer.Option(
        "--db", help="Store to create the study in (default: the spec's storage.url).")] = None,
) -> None:
    """Adopt an Optuna study as an mpsearch study; `mpsearch resume` then continues it."""
    from mpsearch.storage.store import TrialStore

    from ..optuna_import import import_optuna_study
    from ..spec import load_spec

    spec = load_spec(spec_path)
    store = TrialStore(db or spec.storage.url)
    result = import_optuna_study(spec, storage, study_name, store)
    err.print(f"imported {result.completed} completed and {result.failed} failed trials of "
              f"Optuna study {study_name} as study {result.study.name} in {store.masked_url}; "
              f"continue it with: mpsearch resume --study {result.study.name} --db "
              f"{store.masked_url} --extend N", highlight=False)
