"""How far each study has come, read from the database alone (``mpsearch status``).

One grouped query counts every study's trials by state; the lease table says whether a driver
is running the study now and when it last sent a heartbeat; the searcher snapshot stored with the
trials gives strategy facts such as the evolutionary generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from .errors import translating
from .models import COMPLETE, FAILED, RUNNING, LeaseRow, StudyRow, TrialRow
from .store import TrialStore


@dataclass(frozen=True)
class StudyProgress:
    name: str
    status: str
    evaluations: int
    completed: int
    failed: int
    running: int
    best: float | None  # lowest objective of a feasible completed trial
    driver: str | None  # the lease holder while its lease is live
    heartbeat_age: float | None  # seconds since the driver's last heartbeat
    searcher_state: dict[str, Any] | None
    updated_at: datetime
    phase: str | None = None  # what the driver is doing (a setup phase, "searching")


def study_progress(store: TrialStore, name: str | None = None) -> list[StudyProgress]:
    """Progress of every study, or of ``name`` (which must exist)."""
    if name is not None:
        store.study(name)  # a missing study is a one-line error listing the known ones
    now = datetime.now(UTC).replace(tzinfo=None)
    with translating(store.url, "read study progress"), store.engine.connect() as conn:
        studies = select(StudyRow).order_by(StudyRow.id)
        if name is not None:
            studies = studies.where(StudyRow.name == name)
        rows = conn.execute(studies).all()
        counts: dict[tuple[int, str], int] = {
            (sid, status): n for sid, status, n in conn.execute(
                select(TrialRow.study_id, TrialRow.status, func.count())
                .group_by(TrialRow.study_id, TrialRow.status))}
        best = dict(conn.execute(
            select(TrialRow.study_id, func.min(TrialRow.objective))
            .where(TrialRow.status == COMPLETE, TrialRow.feasible.is_(True),
                   TrialRow.samples.is_(None))  # a screen's figure is on fewer samples
            .group_by(TrialRow.study_id)).all())
        leases = {r.study_id: r for r in conn.execute(select(LeaseRow))}
    out = []
    for s in rows:
        lease = leases.get(s.id)
        live = lease if lease is not None and lease.expires_at >= now else None
        out.append(StudyProgress(
            s.name, s.status, s.evaluations, counts.get((s.id, COMPLETE), 0),
            counts.get((s.id, FAILED), 0), counts.get((s.id, RUNNING), 0), best.get(s.id),
            live.owner if live is not None else None,
            (now - live.heartbeat_at).total_seconds() if live is not None else None,
            s.searcher_state, s.updated_at, s.phase))
    return out
