"""What the CLI prints: consoles, number formats, the results table, JSON rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the store (SQLAlchemy) is imported by the commands that open it
    from collections.abc import Sequence

    from mpsearch.spaces.space import Budget
    from mpsearch.storage.store import StudyRecord, TrialRecord, TrialStore

# Rich wraps at 80 columns when not on a terminal; results tables read better wider.
out = Console(width=None if Console().is_terminal else 140)
err = Console(stderr=True)

DbOption = Annotated[str | None, typer.Option(
    "--db", envvar="MPSEARCH_DB",
    help="SQLAlchemy URL or SQLite path of the store (default ./mpsearch.db).")]
StudyOption = Annotated[str, typer.Option("--study", help="Study name.")]


def open_store(db: str | None) -> TrialStore:
    """The existing store at ``db`` (``--db``; None: the default ./mpsearch.db), never created."""
    from mpsearch.storage.config import DEFAULT_URL
    from mpsearch.storage.store import TrialStore

    return TrialStore(DEFAULT_URL if db is None else db, create=False)


def fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def fmt_obj(x: float | None) -> str:
    return "—" if x is None else f"{x:.6f}"


def results_table(study: StudyRecord, best: list[TrialRecord],
                  baselines: list[TrialRecord]) -> Table:
    title = f"study {study.name}: best configurations and uniform baselines"
    table = Table(title=title, title_justify="left")
    moe = study.space.has_experts  # then also the bytes one token reads (docs/moe.md)
    confirmed = any(t.confirmed is not None for t in best)  # searcher.confirm (confirm.py)
    columns = (("rank", "right"), ("trial", "right"), ("avg bits", "right"), ("bytes", "right"),
               *((("active bytes", "right"),) if moe else ()), ("objective", "right"),
               *((("confirmed", "right"),) if confirmed else ()), ("layers", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify)

    def active(t: TrialRecord) -> tuple[str, ...]:
        return (fmt_bytes(active_bytes(study, t)),) if moe else ()

    def figure(t: TrialRecord) -> tuple[str, ...]:
        if not confirmed:
            return ()
        return (fmt_obj(t.confirmed),)

    for rank, t in enumerate(best, 1):
        table.add_row(str(rank), str(t.number), f"{t.avg_bits:.4f}", fmt_bytes(t.total_bytes),
                      *active(t), fmt_obj(t.objective), *figure(t),
                      study.space.summarize(t.candidate))
    if baselines:
        table.add_section()
        for t in baselines:
            label = study.space.decode(t.candidate)
            name = next(iter(label.values())).label
            mark = "" if t.feasible else " (over budget)"
            table.add_row("uniform", str(t.number), f"{t.avg_bits:.4f}",
                          fmt_bytes(t.total_bytes), *active(t), fmt_obj(t.objective),
                          *figure(t), f"{name}{mark}")
    return table


def frontier_table(study: StudyRecord,
                   points: Sequence[tuple[Budget, TrialRecord | None]]) -> Table:
    """The best trial at each budget of a frontier study (``TrialStore.frontier``)."""
    table = Table(title=f"study {study.name}: the frontier, best at each budget",
                  title_justify="left")
    for col in ("budget", "trial", "avg bits", "bytes", "objective", "layers"):
        table.add_column(col, justify="left" if col in ("budget", "layers") else "right")
    for budget, t in points:
        if t is None:
            table.add_row(budget.describe(), "—", "—", "—", "—", "no completed trial fits")
        else:
            table.add_row(budget.describe(), str(t.number), f"{t.avg_bits:.4f}",
                          fmt_bytes(t.total_bytes), fmt_obj(t.objective),
                          study.space.summarize(t.candidate))
    return table


def active_bytes(study: StudyRecord, t: TrialRecord) -> float:
    """The bytes of weights one token reads under trial ``t`` (the cost model's, MoE)."""
    value = study.space.cost(t.candidate).active_bytes
    assert value is not None
    return value


def trial_json(study: StudyRecord, t: TrialRecord) -> dict:
    return {
        "trial": t.number, "objective": t.objective, "avg_bits": t.avg_bits,
        "total_bytes": t.total_bytes,
        **({"active_bytes": active_bytes(study, t)} if study.space.has_experts else {}),
        "origin": t.origin, "worker": t.worker,
        **({"extra": t.extra} if t.extra else {}),
        **({"confirmed": t.confirmed} if t.confirmed is not None else {}),
        "layers": {name: o.label for name, o in study.space.decode(t.candidate).items()},
    }


