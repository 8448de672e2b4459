"""The store's contract, on a SQLite file and on the real PostgreSQL server (``store_url``)."""

import pytest

from mpsearch.spaces import Candidate, Gene, LayerInfo, SearchSpace, parse_option
from mpsearch.storage import (
    COMPLETE,
    FAILED,
    RUNNING,
    StoreError,
    StudyConflictError,
    StudyNotFoundError,
    TrialStore,
)

OPTS = tuple(parse_option(o) for o in ("int3-g128-asym", "int4-g128-asym", "fp16"))
SPACE = SearchSpace((Gene("a", (LayerInfo("a", 128, 128),), OPTS),
                     Gene("b", (LayerInfo("b", 256, 128),), OPTS)), unsearched_params=100)
SPEC = {"study": "s", "budget": {"avg_bits": 4.25}, "seed": 0}


def open_study(store, name="s", spec=SPEC, evaluations=10):
    return store.open_study(name, {**spec, "evaluations": evaluations}, spec, SPACE, "model",
                            "kl", evaluations)


def add(store, study, choices, objective, feasible=True, origin="random"):
    c = Candidate(choices, origin=origin)
    cost = SPACE.cost(c)
    n = store.start_trial(study.id, c, cost.avg_bits, cost.total_bytes, feasible, 0)
    if objective != "running":
        store.finish_trial(study.id, n, objective, "w0", None if objective is not None else "boom",
                           0.1)
    return n


def test_create_reopen_and_conflict(store_url):
    store = TrialStore(store_url)
    study, created = open_study(store)
    assert created and study.name == "s" and study.evaluations == 10
    again, created = open_study(store, evaluations=20)  # same spec, a larger budget
    assert not created and again.id == study.id and again.evaluations == 20
    with pytest.raises(StudyConflictError, match="already exists .* different spec"):
        open_study(store, spec={**SPEC, "seed": 1})
    assert store.study("s").space.decode(Candidate((0, 2))) == {"a": OPTS[0], "b": OPTS[2]}
    with pytest.raises(StudyNotFoundError, match="no study 'nope'.*studies here: s"):
        store.study("nope")


def test_trials_numbered_and_best_is_feasible_complete_lowest(store_url):
    store = TrialStore(store_url)
    study, _ = open_study(store)
    add(store, study, (1, 1), 0.30, origin="uniform")
    add(store, study, (0, 2), 0.10)
    add(store, study, (2, 2), 0.01, feasible=False, origin="uniform")  # over budget: never best
    add(store, study, (0, 0), None)  # failed: never best
    add(store, study, (2, 0), "running")  # in flight: never best
    add(store, study, (2, 1), 0.10)  # ties with trial 1: the earlier trial ranks first
    add(store, study, (1, 0), 0.20)
    rows = store.trials("s")
    assert [t.number for t in rows] == list(range(7))
    assert [t.status for t in rows] == [COMPLETE, COMPLETE, COMPLETE, FAILED, RUNNING, COMPLETE,
                                        COMPLETE]
    best = store.best("s", top=3)
    assert [(t.number, t.objective) for t in best] == [(1, 0.10), (5, 0.10), (6, 0.20)]
    assert best[0].choices == (0, 2) and best[0].worker == "w0"
    assert best[0].avg_bits == pytest.approx(SPACE.cost(Candidate((0, 2))).avg_bits)
    tight = store.best("s", max_bits=SPACE.cost(Candidate((1, 0))).avg_bits)
    assert all(t.avg_bits <= SPACE.cost(Candidate((1, 0))).avg_bits for t in tight)
    assert [t.number for t in store.baselines("s")] == [0, 2]  # completed, cheapest first
    assert store.counts("s") == {COMPLETE: 5, FAILED: 1, RUNNING: 1}


def test_running_trials_of_a_dead_driver_are_marked_failed(store_url):
    store = TrialStore(store_url)
    study, _ = open_study(store)
    add(store, study, (1, 1), "running")
    add(store, study, (1, 2), 0.5)
    assert store.mark_running_failed(study.id, "driver died") == 1
    failed = store.trials("s", FAILED)
    assert [(t.number, t.error) for t in failed] == [(0, "driver died")]


def test_a_second_connection_reads_committed_trials_while_one_writes(store_url):
    writer = TrialStore(store_url)
    study, _ = open_study(writer)
    add(writer, study, (1, 1), 0.3)
    reader = TrialStore(store_url, create=False)
    with writer.engine.connect() as conn:  # an open write transaction on the side
        trans = conn.begin()
        from sqlalchemy import text
        conn.execute(text("UPDATE mps_study SET status = 'x' WHERE id = :i"), {"i": study.id})
        assert [t.number for t in reader.best("s")] == [0]
        trans.rollback()


def test_unreachable_database_is_one_line_with_password_masked():
    url = "postgresql+psycopg://mp:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError) as info:
        TrialStore(url)
    message = str(info.value)
    assert "hunter2" not in message and "mp:***@127.0.0.1:1/nowhere" in message
    assert "\n" not in message


def test_reading_a_missing_store_does_not_create_it(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError, match="no mpsearch store"):
        TrialStore(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_a_store_from_an_older_schema_is_upgraded_for_reading(store_url):
    from sqlalchemy import text

    store = TrialStore(store_url)
    study, _ = open_study(store)
    add(store, study, (1, 1), 0.3)
    with store.engine.begin() as conn:  # as an older mpsearch left it: no searcher_state column
        conn.execute(text("ALTER TABLE mps_study DROP COLUMN searcher_state"))
    store.close()
    reader = TrialStore(store_url, create=False)
    assert [t.objective for t in reader.best("s")] == [0.3]
