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
    from sqlalchemy import create_engine, text

    side = create_engine(store_url)  # another client of the database, not the store's engine
    with side.connect() as conn:  # an open write transaction on the side
        trans = conn.begin()
        conn.execute(text("UPDATE mps_study SET status = 'x' WHERE id = :i"), {"i": study.id})
        assert [t.number for t in reader.best("s")] == [0]
        trans.rollback()
    side.dispose()


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
    from sqlalchemy import create_engine, text

    store = TrialStore(store_url)
    spec = {**SPEC, "model": {"kind": "causal-lm", "dtype": "bfloat16"},
            "calibration": {"source": "docs.txt", "samples": 8, "seq_len": 32, "offset": 5}}
    study, _ = open_study(store, spec=spec)
    add(store, study, (1, 1), 0.3)
    store.close()
    old = create_engine(store_url)  # as an older mpsearch left it: no searcher_state column, no
    with old.begin() as conn:  # typed study columns, no strategy history
        conn.execute(text("DROP TABLE mps_strategy_switch"))
        conn.execute(text("ALTER TABLE mps_study DROP COLUMN searcher_state"))
        for column in ("budget_avg_bits", "model_kind", "dtype", "calibration_source",
                       "calibration_samples", "calibration_seq_len", "calibration_offset"):
            conn.execute(text(f"ALTER TABLE mps_study DROP COLUMN {column}"))
    old.dispose()
    reader = TrialStore(store_url, create=False)
    assert [t.objective for t in reader.best("s")] == [0.3]
    record = reader.study("s")  # the typed columns, filled once from the stored spec
    assert record.budget.avg_bits == 4.25 and record.budget.total_bytes is None
    assert (record.kind, record.dtype) == ("causal-lm", "bfloat16")
    assert record.calibration is not None
    assert (record.calibration.source, record.calibration.samples, record.calibration.seq_len,
            record.calibration.offset) == ("docs.txt", 8, 32, 5)
    from mpsearch.storage.strategies import strategy_history

    assert [s.name for s in strategy_history(reader, record)] == ["evolutionary"]  # for status


def test_typed_study_columns_are_written_at_creation(store_url):
    from mpsearch.spaces import Budget
    from mpsearch.storage import CalibrationRecord

    store = TrialStore(store_url)
    calibration = CalibrationRecord("chats", "messages", 16, 48, 3, 8, "f" * 64, "test", "en",
                                    True)
    frontier = (Budget(3.0, 1e6), Budget(3.5, 1e6))
    study, _ = store.open_study("typed", {"budget": {"avg_bits": 1.0}}, {"x": 1}, SPACE, "model",
                                "kl", 5, budget=Budget(3.5, 1e6), kind="encoder",
                                dtype="float16", calibration=calibration, frontier=frontier)
    again = TrialStore(store_url, create=False).study("typed")
    for record in (study, again):  # the typed arguments, not the spec dict's budget
        assert record.budget == Budget(3.5, 1e6)
        assert record.frontier == record.budgets == frontier
        assert (record.kind, record.dtype, record.calibration) == ("encoder", "float16",
                                                                   calibration)
    assert again.calibration is not None and again.calibration.section() == {
        "source": "chats", "text_field": "messages", "samples": 16, "seq_len": 48, "offset": 3,
        "batch_size": 8, "split": "test", "subset": "en", "chat_template": True}


def test_an_opened_study_is_named_by_its_id(store_url):
    store = TrialStore(store_url)
    study, _ = open_study(store)
    add(store, study, (1, 1), 0.3)
    add(store, study, (0, 2), 0.1)
    assert store.study(study.id) == store.study("s")
    assert [t.number for t in store.trials(study.id)] == [0, 1]
    assert store.counts(study.id) == store.counts("s") == {COMPLETE: 2}
    assert [t.number for t in store.best(study.id, top=1)] == [1]
    assert store.trial(study.id, 0).objective == 0.3
    assert [t.number for t in store.pareto(study.id)] == [t.number for t in store.pareto("s")]
    with pytest.raises(StudyNotFoundError, match="no study 999"):
        store.study(999)


def test_start_and_finish_write_through_the_buffered_writer(store_url):
    """``start_trial``/``finish_trial`` are the writer's path: the result records, as the
    driver's do, how many trials had been dispatched when it was told (resume relies on it)."""
    store = TrialStore(store_url)
    study, _ = open_study(store)
    first = add(store, study, (1, 1), "running")
    add(store, study, (0, 2), 0.1)
    store.finish_trial(study.id, first, 0.5, "w1", None, 0.2)
    by_number = {t.number: t for t in store.trials("s")}
    assert (by_number[0].status, by_number[0].objective, by_number[0].worker) == (
        COMPLETE, 0.5, "w1")
    assert (by_number[0].told_after, by_number[1].told_after) == (2, 2)
    writer = store.writer(study.id, seed=7)
    number = writer.start(Candidate((2, 2)), 1.0, 2.0, True)
    assert number == 2 and store.counts("s") == {COMPLETE: 2}  # buffered until the flush
    writer.finish(number, 0.05, "w0", None, 0.1)
    writer.flush()
    writer.close()
    assert store.trial("s", 2).seed == 7 and store.best("s", top=1)[0].number == 2


def test_group_commits_wait_for_the_group_or_the_window(store_url):
    """The writer commits when ``group`` results wait, or when the oldest buffered event is
    ``window`` seconds old; until then another reader sees nothing. A trial that started and
    finished within one group is inserted finished (no UPDATE), with its ``told_after``."""
    import time

    store = TrialStore(store_url)
    study, _ = open_study(store)
    reader = TrialStore(store_url, create=False)
    writer = store.writer(study.id, group=3, window=3600.0)
    for i, choices in enumerate([(0, 0), (1, 1), (2, 2)]):
        number = writer.start(Candidate(choices), 3.0, 10.0, True)
        assert writer.maybe_flush() is False  # starts alone never fill a group
        writer.finish(number, 0.1 * i, "w0", None, 0.01)
        committed = writer.maybe_flush()
        assert committed is (i == 2)
        assert reader.counts("s") == ({COMPLETE: 3} if committed else {})
    assert [(t.number, t.status, t.told_after) for t in reader.trials("s")] == [
        (0, COMPLETE, 1), (1, COMPLETE, 2), (2, COMPLETE, 3)]
    assert writer.due_in() is None  # nothing waits
    writer.close()

    timed = store.writer(study.id, group=1000, window=1.0)  # wide: a busy machine stalls
    number = timed.start(Candidate((0, 1)), 3.0, 10.0, True)
    due = timed.due_in()
    assert due is not None and 0 < due <= 1.0 and timed.maybe_flush() is False
    time.sleep(1.05)
    assert timed.due_in() == 0.0 and timed.maybe_flush() is True
    assert reader.trial("s", number).status == RUNNING  # committed before its result
    timed.finish(number, None, "w1", "boom", 0.5)
    timed.flush()  # an explicit flush commits at once
    assert (reader.trial("s", number).status, reader.trial("s", number).error) == (FAILED, "boom")
    timed.close()
