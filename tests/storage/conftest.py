"""Constructed studies for the query, export and plan tests: trials with known costs and scores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from mpsearch.spaces import Budget, Candidate, Gene, LayerInfo, SearchSpace, parse_option
from mpsearch.storage import CalibrationRecord, StudyRecord, TrialStore

OPTS = tuple(parse_option(o) for o in ("int2-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16"))
# Two equal-sized layers: a configuration's avg bits is the mean of its two options' bits.
SPACE = SearchSpace((Gene("blk.0.fc", (LayerInfo("blk.0.fc", 128, 64),), OPTS),
                     Gene("blk.1.fc", (LayerInfo("blk.1.fc", 128, 64),), OPTS)),
                    unsearched_params=1000)
BUDGET_BITS = 6.25  # (4.25 + 8.25) / 2: int4+int8 is feasible, int8+int8 is not
SPEC = {"study": "s", "budget": {"avg_bits": BUDGET_BITS, "total_bytes": None},
        "model": {"name": "m", "kind": "auto", "dtype": "float32"},
        "calibration": {"source": "stdlib-docs", "samples": 4, "seq_len": 16}}
# The same facts as the typed study columns a job writes (cluster/job.py:open_job_study).
FACTS = dict(budget=Budget(BUDGET_BITS), kind="auto", dtype="float32",
             calibration=CalibrationRecord("stdlib-docs", samples=4, seq_len=16))


class StudyBuilder:
    """Opens studies and records trials through the store's one write path (``start_trial`` and
    ``finish_trial`` go through the buffered writer the search driver uses)."""

    def __init__(self, store: TrialStore, space: SearchSpace = SPACE) -> None:
        self.store, self.space = store, space

    def study(self, name: str = "s", objective: str = "kl", spec: dict | None = None,
              model: str = "m") -> StudyRecord:
        spec = {**SPEC, "study": name} if spec is None else spec
        record, _ = self.store.open_study(name, spec, spec, self.space, model, objective, 100,
                                          **FACTS)
        return record

    def add(self, study: StudyRecord, choices: Sequence[int], objective: float | str | None,
            origin: str = "random", feasible: bool | None = None) -> int:
        """A trial; objective None records a failure, "running" leaves it in flight."""
        candidate = Candidate(tuple(choices), origin=origin)
        cost = self.space.cost(candidate)
        if feasible is None:
            feasible = cost.avg_bits <= BUDGET_BITS + 1e-9
        number = self.store.start_trial(study.id, candidate, cost.avg_bits, cost.total_bytes,
                                        feasible, 0)
        if objective != "running":
            self.store.finish_trial(study.id, number, objective, "w0",  # type: ignore[arg-type]
                                    None if objective is not None else "boom", 0.1)
        return number


@pytest.fixture
def builder(store_url) -> Iterator[StudyBuilder]:
    store = TrialStore(store_url)
    yield StudyBuilder(store)
    store.close()


@pytest.fixture
def sqlite_builder(tmp_path) -> Iterator[StudyBuilder]:
    """A builder on a SQLite file only, for tests whose subject is not the database."""
    store = TrialStore(f"sqlite:///{tmp_path / 'one.db'}")
    yield StudyBuilder(store)
    store.close()
