"""Resume without Ray: replaying stored trials rebuilds the searcher; owed candidates are re-run.

Each session is the product's driver (``cluster/driver.py``) over a synthetic executor. A driver
"crashes" (it dies after some results: nothing more is written) with evaluations in flight and
results it told the searcher but never committed; resuming must end
with exactly the requested completed trials, no candidate evaluated twice, and the same best
configuration as a run that was never interrupted.
"""

import random
from collections import Counter

import pytest

from mpsearch.cluster.driver import drive as run_session
from mpsearch.searcher import SearcherConfig
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.storage.lease import LeaseLostError, StudyLease, StudyLeasedError

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))


def make_space(n_layers=10):
    rng = random.Random(1)
    layers = [LayerInfo(f"blocks.{i}.fc", 128 * rng.choice([1, 2, 4]), 128 * rng.choice([1, 2]))
              for i in range(n_layers)]
    return build_space(layers, [LayerRule("blocks", OPTIONS)], (), None)


SPACE = make_space()
BUDGET = Budget(avg_bits=4.25)
SENS = [random.Random(7).uniform(0.1, 10) * (i + 1) for i in range(len(SPACE.genes))]


def objective(candidate):
    return sum(s * 2.0 ** -g.options[c].bits
               for s, g, c in zip(SENS, SPACE.genes, candidate.choices, strict=True))


class ShuffledExecutor:
    """``slots`` evaluations at a time, finishing in a seeded random order (like real workers)."""

    def __init__(self, slots, seed, before_dispatch=None):
        self._slots, self.rng, self.pending = slots, random.Random(seed), []
        self.before_dispatch = before_dispatch

    @property
    def slots(self):
        return self._slots

    def submit(self, key, candidate):
        self.pending.append((key, candidate))

    def shutdown(self):
        self.pending = []

    def collect(self):
        if self.before_dispatch:
            self.before_dispatch()
        k = self.rng.randint(1, len(self.pending))
        self.rng.shuffle(self.pending)
        done, self.pending = self.pending[:k], self.pending[k:]
        return [(key, Outcome(objective(c), 0.0, "w")) for key, c in done]


class Crash(Exception):
    pass


GROUPS = {"group": 4, "window": 3600.0}


def drive(store, name, evaluations, order_seed, crash_after=None, extend=0):
    """A session of the product's driver over a synthetic executor; ``crash_after`` results, the
    driver dies: nothing more reaches the database (the buffered tail is lost, as in a SIGKILL)."""
    config = SearcherConfig(name="evolutionary", params={"offspring": 6})
    study, _ = store.open_study(name, {"n": name}, {"n": name}, SPACE, "m", "o", evaluations)
    seen, dead = 0, False

    def make_executor(recorder):
        commit = recorder.writer.flush

        def flush_unless_dead(**options):
            if dead:
                raise Crash()
            return commit(**options)

        recorder.writer.flush = flush_unless_dead
        return ShuffledExecutor(3, order_seed, recorder.flush)

    def on_result(*_):
        nonlocal seen, dead
        seen += 1
        if crash_after is not None and seen >= crash_after:
            dead = True
            raise Crash()

    before = store.counts(name).get(COMPLETE, 0)
    try:
        # commits every 4 results (never by time): a crash always loses told results
        result = run_session(store, study, config, BUDGET, make_executor, extend=extend,
                             on_result=on_result, writer_options=GROUPS)
    except Crash:
        assert store.counts(name).get(COMPLETE, 0) < before + seen  # the lost tail was told
        return None
    return result


def test_an_error_out_of_the_loop_still_commits_what_was_told(store_url):
    """Not a kill: the driver flushes the buffered results before the error propagates."""
    store = TrialStore(store_url)
    config = SearcherConfig(name="evolutionary", params={"offspring": 6})
    study, _ = store.open_study("err", {"n": "err"}, {"n": "err"}, SPACE, "m", "o", 30)
    seen = 0

    def on_result(*_):
        nonlocal seen
        seen += 1
        if seen == 10:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_session(store, study, config, BUDGET,
                    lambda recorder: ShuffledExecutor(3, 2, recorder.flush), on_result=on_result,
                    writer_options=GROUPS)
    assert store.counts("err").get(COMPLETE) == 10
    assert store.study("err").status == "running"  # not finished, not stopped: it may resume
    result = drive(store, "err", 30, order_seed=4)
    assert result.resumed_trials == 10 and store.counts("err").get(COMPLETE) == 30


def best(store, name):
    return store.best(name, top=1)[0]


@pytest.mark.parametrize("crashes", [(13,), (5, 9, 20)])
def test_resume_matches_uninterrupted_run(store_url, crashes):
    store = TrialStore(store_url)
    drive(store, "clean", 40, order_seed=1)
    for i, at in enumerate(crashes):
        drive(store, "crashy", 40, order_seed=10 + i, crash_after=at)
    result = drive(store, "crashy", 40, order_seed=99)
    assert result.replay_note is None
    trials = store.trials("crashy")
    complete = [t for t in trials if t.status == COMPLETE]
    assert len(complete) == 40
    assert max(Counter(t.choices for t in complete).values()) == 1  # nothing evaluated twice
    assert all(t.status != "running" for t in trials)
    assert best(store, "crashy").choices == best(store, "clean").choices
    clean = {t.choices for t in store.trials("clean", COMPLETE)}
    assert {t.choices for t in complete} == clean


def test_extend_continues_with_same_strategy_state(store_url):
    store = TrialStore(store_url)
    drive(store, "long", 50, order_seed=3)
    drive(store, "short", 30, order_seed=4)
    drive(store, "short", 30, order_seed=5, extend=20)
    assert store.study("short").evaluations == 50
    assert {t.choices for t in store.trials("short", COMPLETE)} == \
        {t.choices for t in store.trials("long", COMPLETE)}


def test_lease_is_exclusive_and_expires(store_url, monkeypatch):
    from datetime import timedelta

    from mpsearch.storage import lease

    store = TrialStore(store_url)
    study, _ = store.open_study("leased", {}, {}, SPACE, "m", "o", 5)
    first = StudyLease(store, study.id, "leased", ttl=30, owner="elsewhere:1:a").acquire()
    with pytest.raises(StudyLeasedError, match="being run by elsewhere:1:a"):
        StudyLease(store, study.id, "leased", owner="elsewhere:2:b").acquire()
    # the clocks move past the expiry (a sleep of a short ttl raced a slow first connection)
    real_now = lease._now
    monkeypatch.setattr(lease, "_now", lambda: real_now() + timedelta(seconds=31))
    second = StudyLease(store, study.id, "leased", owner="elsewhere:2:b").acquire()
    assert not first.renew()
    first.lost.set()
    with pytest.raises(LeaseLostError):
        first.check()
    second.release()


def test_lease_of_dead_local_process_is_taken_over(store_url):
    import socket
    import subprocess
    import sys

    store = TrialStore(store_url)
    study, _ = store.open_study("orphan", {}, {}, SPACE, "m", "o", 5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    StudyLease(store, study.id, "orphan", owner=f"{socket.gethostname()}:{dead}:x").acquire()
    StudyLease(store, study.id, "orphan").acquire()  # no wait for the expiry


@pytest.mark.postgres
def test_two_studies_at_once_on_postgres(pg_url):
    """Two drivers, one database: each study gets exactly its own trials, numbered 0..n-1."""
    import threading

    from sqlalchemy import create_engine

    from mpsearch.storage.models import Base

    engine = create_engine(pg_url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    TrialStore(pg_url)  # the schema, once
    errors = []

    def one(name, seed):
        try:
            drive(TrialStore(pg_url), name, 40, order_seed=seed)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f"par{i}", i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = TrialStore(pg_url)
    drive(store, "alone", 40, order_seed=7)
    for name in ("par0", "par1"):
        trials = store.trials(name)
        assert [t.number for t in trials] == list(range(40))
        assert {t.choices for t in trials} == {t.choices for t in store.trials("alone")}


def test_concurrent_start_trial_numbers_are_unique(store_url):
    """``start_trial`` from many threads at once: no number is lost or given twice."""
    import threading

    store = TrialStore(store_url)
    study, _ = store.open_study("race", {}, {}, SPACE, "m", "o", 5)
    numbers = []
    candidate = SPACE.cheapest()

    def many():
        for _ in range(15):
            numbers.append(store.start_trial(study.id, candidate, 2.25, 1.0, True, 0))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(60))
