"""Stored sensitivity profiles: one row per (model, calibration data, objective, gene, option).

A profile row is what compressing one gene alone costs (see :mod:`mpsearch.workers.profile`). It
does not depend on the search (budget, strategy, seed), so it is keyed by what it does depend on:
the model path, a fingerprint of the calibration data (the texts actually scored and ``seq_len``),
the objective, the gene's name and the option's label. A second study of the same model and data
reads its rows instead of measuring them again.

The table lives in the same database as the studies (``Base`` of :mod:`.models`) and is created
on first use, so stores made before it existed gain it without a migration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Engine, Index, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from mpsearch.spaces.options import QuantOption

from .errors import translating
from .models import Base
from .store import TrialStore


class ProfileRow(Base):
    __tablename__ = "mps_profile"
    __table_args__ = (
        UniqueConstraint("model", "calibration", "objective", "layer", "option"),
        Index("ix_mps_profile_key", "model", "calibration", "objective"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(500))
    calibration: Mapped[str] = mapped_column(String(64))  # calibration_fingerprint(...)
    objective: Mapped[str] = mapped_column(String(200))
    layer: Mapped[str] = mapped_column(String(500))  # gene name (a layer, or a tie group)
    option: Mapped[str] = mapped_column(String(200))  # QuantOption.label
    option_spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # QuantOption.to_dict()
    value: Mapped[float]  # objective with only this gene compressed
    delta: Mapped[float]  # value − objective of the full-precision model
    weight_error: Mapped[float | None]  # Σ ‖W − Ŵ‖²
    hessian_error: Mapped[float | None]  # Σ tr((W − Ŵ) H (W − Ŵ)ᵀ)
    seconds: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


@dataclass(frozen=True)
class ProfileKey:
    """What a profile depends on besides the gene and option."""

    model: str
    calibration: str  # calibration_fingerprint(texts, seq_len)
    objective: str


@dataclass(frozen=True)
class ProfileRecord:
    layer: str
    option: QuantOption
    value: float
    delta: float
    weight_error: float | None
    hessian_error: float | None
    seconds: float | None
    worker: str | None


def calibration_fingerprint(texts: Sequence[str], seq_len: int) -> str:
    """sha256 of the scored texts and the token limit: equal data, equal fingerprint."""
    payload = json.dumps({"texts": list(texts), "seq_len": seq_len}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _ensure_table(engine: Engine) -> None:
    ProfileRow.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]


def load_profile(store: TrialStore, key: ProfileKey) -> dict[tuple[str, str], ProfileRecord]:
    """Stored rows of ``key``, by (gene name, option label)."""
    with translating(store.url, "read profile"):
        _ensure_table(store.engine)
        with Session(store.engine) as s:
            rows = s.scalars(select(ProfileRow).where(
                ProfileRow.model == key.model, ProfileRow.calibration == key.calibration,
                ProfileRow.objective == key.objective)).all()
            return {(r.layer, r.option): ProfileRecord(
                r.layer, QuantOption.from_dict(r.option_spec), r.value, r.delta, r.weight_error,
                r.hessian_error, r.seconds, r.worker) for r in rows}


def save_profile(store: TrialStore, key: ProfileKey, measurements: Iterable[Any],
                 worker: str | None = None) -> int:
    """Store measured rows (objects with ``layer, option, value, delta, weight_error,
    hessian_error, seconds``, e.g. :class:`~mpsearch.workers.profile.ProfileMeasurement`);
    failed ones (``value`` None) and rows already stored are skipped. Returns how many were added.
    """
    todo = [m for m in measurements if m.value is not None]
    if not todo:
        return 0
    with translating(store.url, "save profile"):
        _ensure_table(store.engine)
        for _attempt in range(2):  # a concurrent writer may insert the same key between our read
            try:  # and our insert; the second round sees its rows and skips them
                return _insert_missing(store.engine, key, todo, worker)
            except IntegrityError:
                continue
        return _insert_missing(store.engine, key, todo, worker)


def _insert_missing(engine: Engine, key: ProfileKey, todo: list[Any], worker: str | None) -> int:
    now = datetime.now(UTC).replace(tzinfo=None)
    with Session(engine) as s, s.begin():
        have = {tuple(r) for r in s.execute(select(ProfileRow.layer, ProfileRow.option).where(
            ProfileRow.model == key.model, ProfileRow.calibration == key.calibration,
            ProfileRow.objective == key.objective))}
        added = 0
        for m in todo:
            if (m.layer, m.option.label) in have:
                continue
            have.add((m.layer, m.option.label))
            s.add(ProfileRow(model=key.model, calibration=key.calibration, objective=key.objective,
                             layer=m.layer, option=m.option.label, option_spec=m.option.to_dict(),
                             value=m.value, delta=m.delta, weight_error=m.weight_error,
                             hessian_error=m.hessian_error, seconds=m.seconds, worker=worker,
                             created_at=now))
            added += 1
        return added
