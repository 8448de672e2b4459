"""Which strategies a study has run: the spec's, then each ``resume --searcher`` switch.

A switch is recorded with the trial number it starts at, so a later resume knows which trials
the current strategy proposed (those it replays exactly) and which came before (told to it
first, as results it did not ask for). ``mpsearch status`` shows the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from .errors import translating
from .models import StrategySwitchRow, StudyRow, TrialRow
from .records import StudyRecord
from .store import TrialStore


@dataclass(frozen=True)
class StrategyRun:
    """One strategy of a study's history: trials numbered ``from_trial`` on (until the next)."""

    name: str
    params: dict[str, Any]
    from_trial: int
    switched_at: datetime | None  # None: the spec's strategy, there from the start


def spec_strategy(study: StudyRecord) -> StrategyRun:
    """The strategy the study's spec names."""
    searcher = study.spec.get("searcher") or {}
    return StrategyRun(searcher.get("name", "evolutionary"), dict(searcher.get("params") or {}),
                       0, None)


def strategy_history(store: TrialStore, study: StudyRecord) -> list[StrategyRun]:
    """The spec's strategy, then every switch in order; the last is the one that runs now."""
    with translating(store.url, f"read the strategies of study {study.name!r}"), \
            store.engine.connect() as conn:
        rows = conn.execute(select(StrategySwitchRow).where(StrategySwitchRow.study_id == study.id)
                            .order_by(StrategySwitchRow.id)).all()
    return [spec_strategy(study)] + [StrategyRun(r.name, dict(r.params), r.from_trial,
                                                 r.switched_at) for r in rows]


def record_switch(store: TrialStore, study: StudyRecord, name: str,
                  params: dict[str, Any]) -> StrategyRun:
    """Record that the study continues with strategy ``name`` from its next trial on.

    The caller holds the study's lease (no trial is being added meanwhile).
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    with translating(store.url, f"record the strategy of study {study.name!r}"), \
            store.engine.begin() as conn:
        last = conn.scalar(select(func.max(TrialRow.number)).where(TrialRow.study_id == study.id))
        start = 0 if last is None else last + 1
        conn.execute(insert(StrategySwitchRow).values(
            study_id=study.id, from_trial=start, name=name, params=params, switched_at=now))
        conn.execute(update(StudyRow).where(StudyRow.id == study.id)
                     .values(updated_at=now))
    return StrategyRun(name, dict(params), start, now)
