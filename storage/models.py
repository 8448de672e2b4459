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

    trials: Mapped[list[TrialRow]] = relationship(back_populates="study")


class TrialRow(Base):
    __tablename__ = "mps_trial"
    __table_args__ = (
        UniqueConstraint("study_id", "number"),
        Index("ix_mps_trial_best", "study_id", "status", "feasible", "objective"),
        Index("ix_mps_trial_bits", "study_id", "avg_bits"),
        Index("ix_mps_trial_bytes", "study_id", "total_bytes"),
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
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    study: Mapped[StudyRow] = relationship(back_populates="trials")
