"""Coordinator overhead: trials per second through the whole search loop with a no-op objective.

Everything a real search does except the evaluation itself, through the product's driver
(``cluster/driver.py``) with Ray actors that answer at once: the evolutionary searcher asks, each
trial is numbered, candidates go to Ray worker actors, results come back through ``ray.wait``,
are told to the searcher and written in group commits, under the study's lease with its
heartbeat, with the study's Optuna mirror kept in step by its thread (``--no-mirror``: without).
Stores: a SQLite file and PostgreSQL (a temporary database, dropped). A run is timed from the
actors being up to the session's end: every trial committed and the mirror caught up (its last
sync runs after the loop, so a short fast run would otherwise leave most of its work untimed).

    python bench/coordinator_overhead.py                     # 1, 2, 4 workers; SQLite + PostgreSQL
    python bench/coordinator_overhead.py --trials 5000 --workers 4 --depth 1 --no-mirror

Target: ≥ 1,000 trials/s with one worker, so the coordinator never limits real evaluations.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid

import ray

from mpsearch.cluster.driver import drive
from mpsearch.cluster.executor import RayExecutor
from mpsearch.cluster.spec import SPEC_VERSION
from mpsearch.searcher import SearcherConfig
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import TrialStore
from mpsearch.workers.actor import BatchEvaluation
from mpsearch.workers.worker import EvalOutcome

PG_ADMIN = os.environ.get("MPSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@ray.remote
class NoopActor(BatchEvaluation):
    """A worker that answers at once: what is left is the coordinator's own cost (several
    candidates per call, as ``WorkerActor`` takes them, when the executor batches)."""

    def __init__(self, _setup, _space, label):
        self.label = label

    def name(self):
        return self.label

    def evaluate(self, candidate):
        return self.label, EvalOutcome(float(sum(candidate.choices)), 0.0)


def make_space(n_layers: int):
    rng = random.Random(0)
    options = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym",
                                              "int4-g128-asym", "int8-g128-asym", "fp16"))
    layers = [LayerInfo(f"blocks.{i}.fc", 128 * rng.choice([1, 2, 4]), 128 * rng.choice([1, 2]))
              for i in range(n_layers)]
    return build_space(layers, [LayerRule("blocks", options)], (), None)


def one_run(url: str, workers: int, trials: int, depth: int, layers: int,
            mirror: bool = True) -> float:
    space, budget = make_space(layers), Budget(avg_bits=4.25)
    store = TrialStore(url)
    name = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
    study, _ = store.open_study(name, {"version": SPEC_VERSION}, {"n": name}, space, "noop",
                                "noop", trials)
    config = SearcherConfig(name="evolutionary", params={"offspring": 32}, baselines=False)
    clock: list[float] = []  # actors up → the session ended (trials committed, mirror synced)

    def make_executor(recorder):
        executor = RayExecutor(None, space, workers, cpus=0.5, actor_cls=NoopActor,
                               depth=depth, before_dispatch=recorder.flush,
                               flush_due=recorder.due_in)
        clock.append(time.perf_counter())
        return executor

    stats = drive(store, study, config, budget, make_executor, optuna_mirror=mirror).stats
    seconds = time.perf_counter() - clock[0]
    assert stats.completed == trials and store.counts(name) == {"complete": trials}
    store.close()
    return trials / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--depth", type=int, default=2,
                        help="candidates queued per worker (2: the spec's default, workers.depth)")
    parser.add_argument("--layers", type=int, default=16,
                        help="searched layers (the searcher's own cost grows with them)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-mirror", action="store_true",
                        help="keep no Optuna mirror of the study (the loop and the store alone)")
    args = parser.parse_args()

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    stores = {"sqlite": f"sqlite:///{tempfile.mkdtemp(prefix='mps-bench-')}/bench.db"}
    admin = None
    if not args.no_postgres:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        db = f"mpsearch_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        stores["postgres"] = make_url(PG_ADMIN).set(database=db).render_as_string(
            hide_password=False)
    try:
        one_run(stores["sqlite"], 1, 200, args.depth, args.layers)  # warm up: actors, imports, caches
        print(f"{'store':10} {'workers':>7} {'trials/s':>9}   ({args.trials} trials, "
              f"{args.layers} layers, depth {args.depth}, mirror {not args.no_mirror}, "
              f"{os.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.1f})")
        for kind, url in stores.items():
            for workers in args.workers:
                rate = one_run(url, workers, args.trials, args.depth, args.layers,
                               not args.no_mirror)
                print(f"{kind:10} {workers:>7} {rate:>9.0f}", flush=True)
    finally:
        ray.shutdown()
        if admin is not None:
            from sqlalchemy import text

            TrialStore(stores["postgres"]).close()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
