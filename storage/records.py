"""The values the store hands out: a study and a trial as frozen records, and the row → record
conversions and WHERE clauses that every read shares (:mod:`.store`, :mod:`.queries`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement

from mpsearch.spaces.space import Budget, Candidate, SearchSpace

from .models import StudyRow, TrialRow

BASELINE_ORIGIN = "uniform"  # the origin the uniform-baseline strategy gives its trials
# Budget filters admit a trial this far over the bound: avg_bits is a float quotient, and the
# feasibility flag written with each trial allows the same slack (``Budget.admits``).
FILTER_TOL = 1e-9
StudyKey = int | str  # a study's id (once opened) or its name


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration data a study scores on: the spec's section, and a fingerprint of the texts
    it produced (``profiles.calibration_fingerprint``; None for a study stored without it)."""

    source: str = "stdlib-docs"
    text_field: str = "text"
    samples: int = 32
    seq_len: int = 64
    offset: int = 0
    batch_size: int = 32
    fingerprint: str | None = None
    split: str = "train"  # of a saved DatasetDict or a hub dataset
    subset: str | None = None  # a hub dataset's configuration
    chat_template: bool = False  # samples are conversations rendered by the model's template

    def section(self) -> dict[str, Any]:
        """The spec's ``calibration`` section (what loads the same texts again)."""
        return {"source": self.source, "text_field": self.text_field, "samples": self.samples,
                "seq_len": self.seq_len, "offset": self.offset, "batch_size": self.batch_size,
                "split": self.split, "subset": self.subset, "chat_template": self.chat_template}


@dataclass(frozen=True)
class StudyRecord:
    id: int
    name: str
    spec: dict[str, Any]
    spec_hash: str
    space: SearchSpace
    model: str
    objective: str
    evaluations: int
    status: str
    created_at: datetime
    budget: Budget = Budget()  # the loosest point of a frontier: what makes a trial feasible
    kind: str = "auto"  # the model kind as the spec gave it (auto, causal-lm, encoder)
    dtype: str = "float32"
    calibration: CalibrationRecord | None = None
    frontier: tuple[Budget, ...] = ()  # a frontier study's budget points, tightest first

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """Every budget the study searched: the frontier's points, or its one budget."""
        return self.frontier or (self.budget,)


@dataclass(frozen=True)
class TrialRecord:
    number: int
    status: str
    origin: str
    choices: tuple[int, ...]
    samples: int | None
    objective: float | None
    avg_bits: float
    total_bytes: float
    feasible: bool
    seed: int
    worker: str | None
    error: str | None
    eval_seconds: float | None
    started_at: datetime
    finished_at: datetime | None
    # Resume bookkeeping (see the columns of TrialRow).
    told_after: int | None = None
    interrupted: bool = False
    retry_of: int | None = None
    extra: dict[str, float] | None = None
    confirmed: float | None = None  # the objective on every calibration sample, after the search

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.choices, self.samples, self.origin)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _study(row: StudyRow) -> StudyRecord:
    calibration = None
    if row.calibration_source is not None:
        calibration = CalibrationRecord(
            row.calibration_source, row.calibration_text_field or "text",
            row.calibration_samples or 0, row.calibration_seq_len or 0,
            row.calibration_offset or 0, row.calibration_batch_size or 0,
            row.calibration_fingerprint, row.calibration_split or "train",
            row.calibration_subset, bool(row.calibration_chat_template))
    return StudyRecord(row.id, row.name, row.spec, row.spec_hash, SearchSpace.from_dict(row.space),
                       row.model, row.objective, row.evaluations, row.status, row.created_at,
                       Budget(row.budget_avg_bits, row.budget_total_bytes),
                       row.model_kind or "auto", row.dtype or "float32", calibration,
                       tuple(Budget.from_dict(point) for point in row.budget_frontier or ()))


def typed_columns(budget: Budget, kind: str, dtype: str,
                  calibration: CalibrationRecord | None,
                  frontier: tuple[Budget, ...] = ()) -> dict[str, Any]:
    """The typed study columns (see ``StudyRow``) of these values; ``frontier`` (more than one
    point) is stored beside ``budget``, its loosest point."""
    c = calibration
    return dict(budget_avg_bits=budget.avg_bits, budget_total_bytes=budget.total_bytes,
                budget_frontier=[b.to_dict() for b in frontier] if len(frontier) > 1 else None,
                model_kind=kind, dtype=dtype,
                calibration_source=None if c is None else c.source,
                calibration_text_field=None if c is None else c.text_field,
                calibration_samples=None if c is None else c.samples,
                calibration_seq_len=None if c is None else c.seq_len,
                calibration_offset=None if c is None else c.offset,
                calibration_batch_size=None if c is None else c.batch_size,
                calibration_fingerprint=None if c is None else c.fingerprint,
                calibration_split=None if c is None else c.split,
                calibration_subset=None if c is None else c.subset,
                calibration_chat_template=None if c is None else c.chat_template)


def legacy_columns(spec: dict[str, Any]) -> dict[str, Any]:
    """The typed columns of a study stored before they existed, from its stored spec: the one
    place the spec JSON is read back, once per old study, when a store is opened."""
    budget = spec.get("budget") or {}
    model = spec.get("model") or {}
    section = spec.get("calibration")
    calibration = None
    if isinstance(section, dict):
        fields = {k: section[k] for k in ("source", "text_field", "samples", "seq_len", "offset",
                                          "batch_size", "split", "subset", "chat_template")
                  if k in section}
        calibration = CalibrationRecord(**fields, fingerprint=spec.get("calibration_fingerprint"))
    return typed_columns(Budget(budget.get("avg_bits"), budget.get("total_bytes")),
                         model.get("kind", "auto"), model.get("dtype", "float32"), calibration)


def _trial(row: TrialRow) -> TrialRecord:
    return TrialRecord(row.number, row.status, row.origin, tuple(row.choices), row.samples,
                       row.objective, row.avg_bits, row.total_bytes, row.feasible, row.seed,
                       row.worker, row.error, row.eval_seconds, row.started_at, row.finished_at,
                       row.told_after, bool(row.interrupted), row.retry_of, row.extra,
                       row.confirmed)


def budget_clauses(max_bits: float | None = None, max_bytes: float | None = None,
                   origin: str | None = None) -> list[ColumnElement[bool]]:
    """WHERE clauses for the optional filters every query shares (bounds allow ``FILTER_TOL``)."""
    clauses: list[ColumnElement[bool]] = []
    if max_bits is not None:
        clauses.append(TrialRow.avg_bits <= max_bits + FILTER_TOL)
    if max_bytes is not None:
        clauses.append(TrialRow.total_bytes <= max_bytes + FILTER_TOL)
    if origin is not None:
        clauses.append(TrialRow.origin == origin)
    return clauses


