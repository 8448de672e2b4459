"""SQLAlchemy 2 typed models: studies and their trials.

One row per trial, written when the trial is dispatched (status ``running``) and completed when
its result arrives, so a crashed driver leaves evidence of what was in flight. The columns that
queries filter and sort on (status, feasibility, objective, bits, bytes) are indexed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUNNING, COMPLETE, FAILED = "running", "complete", "failed"  # trial states
FINISHED = "finished"  # a study that reached its evaluation budget
STOPPED = "stopped"  # a study that ended short of its budget (too many failures, or exhausted)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "mps_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The validated job spec as JSON, and its hash: a rerun under the same name must match it.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    # Genes, their layers and options: enough to decode stored candidates without the model.
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(500))
    objective: Mapped[str] = mapped_column(String(50))
    evaluations: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default=RUNNING)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # A snapshot of the searcher's ``state()`` (generation, parent, ...) written with the trials,
    # for ``mpsearch status``. Resume rebuilds the searcher by replaying the trials instead.
    searcher_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What later commands need (plans, checkpoints, budgets, comparisons), typed, written at
    # creation so nothing reads the spec JSON back. Nullable only because stores made before
    # these columns gain them empty; the store fills them from the stored spec once, on opening.
    budget_avg_bits: Mapped[float | None]
    budget_total_bytes: Mapped[float | None]
    # A frontier study's budget points, tightest first, each as Budget's fields (the two columns
    # above hold the loosest); None for a study of one budget.
    budget_frontier: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    model_kind: Mapped[str | None] = mapped_column(String(20))  # as the spec says: auto, causal-lm
    dtype: Mapped[str | None] = mapped_column(String(20))
    calibration_source: Mapped[str | None] = mapped_column(Text)  # None: the study has no data
    calibration_text_field: Mapped[str | None] = mapped_column(String(200))
    calibration_samples: Mapped[int | None]
    calibration_seq_len: Mapped[int | None]
    calibration_offset: Mapped[int | None]
    calibration_batch_size: Mapped[int | None]
    calibration_fingerprint: Mapped[str | None] = mapped_column(String(64))  # of the texts scored
    calibration_split: Mapped[str | None] = mapped_column(String(200))  # of a dataset
    calibration_subset: Mapped[str | None] = mapped_column(String(200))  # of a hub dataset
    calibration_chat_template: Mapped[bool | None]  # conversations through the model's template
    # What the running driver is doing ("loading the model", "level int4-g128-asym-gptq", ...,
    # "searching"), for ``mpsearch status``.
    phase: Mapped[str | None] = mapped_column(String(200), nullable=True)

    trials: Mapped[list[TrialRow]] = relationship(back_populates="study")


class TrialRow(Base):
    __tablename__ = "mps_trial"
    __table_args__ = (
        UniqueConstraint("study_id", "number"),
        Index("ix_mps_trial_best", "study_id", "status", "feasible", "objective"),
        Index("ix_mps_trial_bits", "study_id", "avg_bits"),
        Index("ix_mps_trial_bytes", "study_id", "total_bytes"),
        # Covers the Pareto query (storage/queries.py): per-bits minima and front lookups.
        Index("ix_mps_trial_pareto", "study_id", "status", "avg_bits", "objective", "number",
              "feasible", "samples"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("mps_study.id"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))
    origin: Mapped[str] = mapped_column(String(100))
    choices: Mapped[list[int]] = mapped_column(JSON)
    samples: Mapped[int | None]
    objective: Mapped[float | None]
    avg_bits: Mapped[float]
    total_bytes: Mapped[float]
    feasible: Mapped[bool]
    seed: Mapped[int]
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    eval_seconds: Mapped[float | None]
    # Further numbers of the same evaluation, e.g. {"perplexity": 12.3} beside a KL objective.
    extra: Mapped[dict[str, float] | None] = mapped_column(JSON)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Resume bookkeeping (see cluster/resume.py). ``told_after``: how many trials of the study had
    # been dispatched when this result was told to the searcher, so a replay tells results at the
    # same points. ``interrupted``: failed only because its driver stopped; its candidate is owed
    # a result and is dispatched again as a later trial whose ``retry_of`` is this number.
    told_after: Mapped[int | None]
    interrupted: Mapped[bool | None]
    # The objective re-scored on every calibration sample after the search (``searcher.confirm``,
    # cluster/confirm.py); ``best`` ranks confirmed trials first, by this figure.
    confirmed: Mapped[float | None]
    retry_of: Mapped[int | None]

    study: Mapped[StudyRow] = relationship(back_populates="trials")


class LeaseRow(Base):
    """Who drives a study now: one row per study, taken and renewed in single statements.

    A driver holds the study while ``expires_at`` is in the future and renews it (a heartbeat)
    well before then; a crashed driver's lease simply expires. The row is never deleted.
    """

    __tablename__ = "mps_lease"

    study_id: Mapped[int] = mapped_column(ForeignKey("mps_study.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class StrategySwitchRow(Base):
    """A change of strategy (``resume --searcher``): from trial ``from_trial`` on, the study's
    candidates come from strategy ``name`` with ``params``; before it, from the spec's strategy
    or the previous switch. Rows are only added (see :mod:`.strategies`)."""

    __tablename__ = "mps_strategy_switch"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("mps_study.id"), index=True)
    from_trial: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    switched_at: Mapped[datetime]
