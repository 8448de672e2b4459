"""The database goes away and comes back during a run: the driver keeps going, losing nothing.

Real outages, not mocks: on PostgreSQL every connection of the run is terminated from outside
(``pg_terminate_backend``, what a restart or failover does to it); on SQLite another process-like
connection holds an exclusive lock. The writer keeps results buffered and retries with backoff;
the study ends with exactly its count of completed trials, each trial number and configuration
once. Past the retry window the run stops with one line (DatabaseGoneError).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mpsearch.cluster.driver import drive
from mpsearch.searcher import SearcherConfig
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.storage.errors import StoreError, translating
from mpsearch.storage.retry import DatabaseGoneError, Outage, is_transient

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))
_rng = random.Random(1)
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 128 * _rng.choice([1, 2]), 128)
                     for i in range(8)], [LayerRule("blocks", OPTIONS)], (), None)
BUDGET = Budget(avg_bits=4.25)
EVALUATIONS = 40


def objective(candidate):
    return sum((i + 1) * 2.0 ** -g.options[c].bits
               for i, (g, c) in enumerate(zip(SPACE.genes, candidate.choices, strict=True)))


class OutageExecutor:
    """Evaluations finish one per collect (every 50 ms, while the database is away too); at the
    collects named in ``outages`` (or the first after, once a running outage is over) it cuts
    the database with ``cut()``."""

    def __init__(self, before_dispatch, cut, outages, ongoing):
        self.before_dispatch, self.cut, self.ongoing = before_dispatch, cut, ongoing
        self.outages = sorted(outages)
        self.pending, self.collects, self.cuts = [], 0, 0

    @property
    def slots(self):
        return 3

    def submit(self, key, candidate):
        self.pending.append((key, candidate))

    def shutdown(self):
        self.pending = []

    def collect(self):
        self.collects += 1
        if self.outages and self.collects >= self.outages[0] and not self.ongoing():
            self.outages.pop(0)
            self.cut()
            self.cuts += 1
        self.before_dispatch()
        time.sleep(0.05)
        done, self.pending = self.pending[:1], self.pending[1:]
        return [(key, Outcome(objective(c), 0.0, "w")) for key, c in done]


def terminate_backends(url: str, must_find: bool = True) -> int:
    """What a PostgreSQL restart does to a client: every connection to the database is killed;
    returns how many there were."""
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        n = conn.scalar(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = :db AND pid <> pg_backend_pid()"),
                        {"db": make_url(url).database})
    admin.dispose()
    assert n >= 1 or not must_find  # the run's connection was there to be terminated
    return n


class SqliteLock:
    """An exclusive lock another connection holds for ``seconds``, released by a timer thread
    (the writer's busy timeout is made short, so it meets "database is locked" at once)."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def __call__(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.execute("BEGIN EXCLUSIVE")

        def release() -> None:
            conn.execute("ROLLBACK")
            conn.close()
        timer = threading.Timer(self.seconds, release)
        timer.daemon = True
        timer.start()


def run(store, study_name, outages, url, retry_seconds=30.0, lock_seconds=0.3):
    study, _ = store.open_study(study_name, {"n": study_name}, {"n": study_name}, SPACE, "m", "o",
                                EVALUATIONS)
    sqlite = url.startswith("sqlite")
    lock = SqliteLock(make_url(url).database, lock_seconds) if sqlite else None
    writers, executors = [], []

    def make_executor(recorder):
        writers.append(recorder.writer)
        if lock is not None:  # a short busy timeout on each connection the writer opens
            connect = recorder.writer._connect

            def impatient():
                conn = connect()
                conn.exec_driver_sql("PRAGMA busy_timeout=20")
                conn.commit()
                return conn
            recorder.writer._connect = impatient

        cut = lock if lock is not None else (lambda: terminate_backends(url))
        executors.append(OutageExecutor(recorder.flush, cut, outages,
                                        lambda: recorder.writer.outage.ongoing))
        return executors[-1]

    config = SearcherConfig(name="evolutionary", params={"offspring": 6})
    result = drive(store, study, config, BUDGET, make_executor,
                   writer_options={"retry_seconds": retry_seconds})
    assert executors[0].cuts == len(outages)
    return result, writers[0]


def test_the_database_goes_away_three_times_and_nothing_is_lost(store_url, caplog):
    caplog.set_level(logging.WARNING, logger="mpsearch.storage")
    store = TrialStore(store_url)
    result, writer = run(store, "outages", outages=(4, 16, 28), url=store_url)
    assert writer.outage.outages == 3  # each cut was met by the writer and survived
    assert sum("retrying for up to 30 s" in r.getMessage() for r in caplog.records) == 3
    assert sum("is back after" in r.getMessage() for r in caplog.records) == 3
    trials = store.trials("outages")
    assert [t.number for t in trials] == list(range(len(trials)))
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == EVALUATIONS == result.stats.completed
    assert max(Counter(t.choices for t in complete).values()) == 1
    assert {t.status for t in trials} == {COMPLETE}
    assert store.study("outages").status == "finished"


def test_past_the_window_the_run_stops_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    store = TrialStore(url)
    with pytest.raises(DatabaseGoneError) as info:
        run(store, "gone", outages=(4,), url=url, retry_seconds=0.5, lock_seconds=4)
    message = str(info.value)
    assert "\n" not in message and "stayed unreachable for" in message
    assert "database is locked" in message and "run again on resume" in message
    complete = store.trials("gone", COMPLETE)
    assert 0 < len(complete) < EVALUATIONS  # what was committed before the outage is kept


def test_transient_errors_are_told_from_the_others(store_url):
    engine = TrialStore(store_url).engine

    def error_of(statement: str) -> StoreError:
        with pytest.raises(StoreError) as info, translating(store_url, "test"), \
                engine.connect() as conn:
            conn.execute(text(statement))
        return info.value

    assert not error_of("SELECT * FROM no_such_table").transient
    if store_url.startswith("postgresql"):
        assert error_of("SELECT pg_terminate_backend(pg_backend_pid())").transient
    assert not is_transient(ValueError("not a database error"))


def test_backoff_grows_and_the_window_is_measured_from_the_first_failure():
    now = [0.0]
    outage = Outage(10.0, "db", clock=lambda: now[0])
    gone = StoreError("db: cannot record trials: terminating connection")
    gone.transient = True
    waits = []
    for _ in range(5):
        outage.failed(gone, pending=3)
        waits.append(outage.next_at - now[0])
        assert not outage.ready()
        now[0] = outage.next_at
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]  # 15.5 s after the first failure: over the window
    with pytest.raises(DatabaseGoneError, match="stayed unreachable for 16 s"):
        outage.failed(gone, pending=3)
    permanent = StoreError("db: cannot record trials: no such table")
    with pytest.raises(StoreError, match="no such table"):
        Outage(10.0).failed(permanent, pending=0)


@pytest.mark.slow
def test_a_real_run_survives_three_terminated_connections(ray_session, pg_url, tiny_llama_path):
    """``run_job`` on Ray workers and PostgreSQL; its result hook terminates every connection of the
    database three times as trials complete (after the 5th, 12th and 20th result); the study still
    ends exact and without repeats."""
    from mpsearch.cluster.job import run_job
    from mpsearch.cluster.spec import parse_spec
    from mpsearch.storage.models import Base

    engine = create_engine(pg_url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    evaluations = 30
    spec = parse_spec({
        "study": "terminated", "model": {"name": tiny_llama_path},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"layers\.\d+\.", "options": [
            "int2-g32-asym", "int3-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]}]},
        "budget": {"avg_bits": 4.5}, "searcher": {"name": "evolutionary", "params": {"offspring": 6}},
        "evaluations": evaluations, "workers": {"count": 2, "cpus": 1},
        "storage": {"url": pg_url, "retry_seconds": 60}, "seed": 3})
    store = TrialStore(pg_url)
    cuts = []

    def cut(stats, _candidate, _outcome) -> None:
        # inside the driver's loop, as results arrive (a watcher polling the table from another
        # thread raced a fast run to its end): at the first result past each threshold at which
        # the run is connected (while it waits out an outage it holds no connection to cut)
        if len(cuts) < 3 and stats.completed >= (5, 12, 20)[len(cuts)] \
                and terminate_backends(pg_url, must_find=False):
            cuts.append(stats.completed)
        time.sleep(0.1)  # the tiny model's 30 results would otherwise all arrive within one
        # outage's first backoff (0.5 s), leaving no connected moment for the next cut

    result = run_job(spec, store, on_result=cut)
    assert len(cuts) == 3, cuts
    trials = store.trials("terminated")
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == evaluations == result.stats.completed
    assert [t.number for t in trials] == list(range(len(trials)))
    assert max(Counter(t.choices for t in complete).values()) == 1
    assert {t.status for t in trials} == {COMPLETE}
    assert store.study("terminated").status == "finished"
