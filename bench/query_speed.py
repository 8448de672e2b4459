"""How fast ``best`` and ``pareto`` answer on a 100,000-trial study, in SQLite and PostgreSQL.

    python bench/query_speed.py                       # SQLite file + the local PostgreSQL server
    python bench/query_speed.py --trials 20000 --no-postgres

The study has MiniLM's shape (36 searched layers × 7 options, the README's space) and synthetic
trials: random configurations, an objective that falls with bits plus noise, 97% complete, 2%
failed, 1% running, the budget at 4.25 bits. Rows go in through the store's one write path (the
buffered writer) with 10,000 trials per commit. Each query is timed through the public API (study
lookup included) after one warm-up call; the median and the worst of ``--repeat`` calls are
printed in milliseconds (target: under 200 ms each). The PostgreSQL database is created for the
run and dropped after it.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Budget, Candidate, Gene, LayerInfo, SearchSpace
from mpsearch.storage import TrialStore

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BUDGET = 4.25


def minilm_space() -> SearchSpace:
    bits = [2, 3, 4, 5, 6, 8]
    options = tuple(QuantOption("int", b, 128) for b in bits) + (QuantOption("fp16", 16, None),)
    shapes = [("attention.self.query", 384, 384), ("attention.self.key", 384, 384),
              ("attention.self.value", 384, 384), ("attention.output.dense", 384, 384),
              ("intermediate.dense", 384, 1536), ("output.dense", 1536, 384)]
    genes = tuple(Gene(f"encoder.layer.{i}.{part}",
                       (LayerInfo(f"encoder.layer.{i}.{part}", fin, fout),), options)
                  for i in range(6) for part, fin, fout in shapes)
    return SearchSpace(genes, unsearched_params=12_096_384)


def fill(url: str, n: int, seed: int) -> float:
    """Create the study and write ``n`` trials through the store's writer, 10,000 per commit
    (each trial inserted finished, since it starts and ends in one group); returns the seconds
    the writes took."""
    store = TrialStore(url)
    space = minilm_space()
    spec = {"study": "bench", "budget": {"avg_bits": BUDGET}}
    study, _ = store.open_study("bench", spec, spec, space, "minilm", "embedding_distortion", n,
                                budget=Budget(BUDGET))
    rng = random.Random(seed)
    start = time.perf_counter()
    writer = store.writer(study.id, seed, group=10_000, window=math.inf)
    for _ in range(n):
        candidate = Candidate(tuple(rng.randrange(len(g.options)) for g in space.genes))
        cost = space.cost(candidate)
        number = writer.start(candidate, cost.avg_bits, cost.total_bytes,
                              cost.avg_bits <= BUDGET + 1e-9)
        roll = rng.random()
        if roll < 0.97:
            objective = math.exp(-1.3 * cost.avg_bits) * rng.uniform(0.8, 1.2)
            writer.finish(number, objective, "w0", None, 0.3)
        elif roll < 0.99:
            writer.finish(number, None, "w0", "boom", 0.3)
        writer.maybe_flush()  # 1 % stay running
    writer.flush()
    writer.close()
    seconds = time.perf_counter() - start
    store.analyze()
    store.close()
    return seconds


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm-up: connection pool, statement cache, page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def bench(label: str, url: str, n: int, repeat: int, seed: int) -> None:
    seconds = fill(url, n, seed)
    store = TrialStore(url, create=False)
    queries: dict[str, Callable[[], object]] = {
        "best (top 5)": lambda: store.best("bench", top=5),
        "best (top 5, max_bits 3.5)": lambda: store.best("bench", top=5, max_bits=3.5),
        "pareto": lambda: store.pareto("bench"),
        "pareto (feasible only)": lambda: store.pareto("bench", feasible_only=True),
    }
    print(f"{label}: {n:,} trials inserted in {seconds:.1f} s; front has "
          f"{len(store.pareto('bench'))} trials")
    for name, fn in queries.items():
        median, worst = timed(fn, repeat)
        print(f"  {name:28s} median {median:7.1f} ms   worst {worst:7.1f} ms")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--pg-admin", default=PG_ADMIN, help="URL of a database to CREATE from")
    args = parser.parse_args()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPU cores, load average {load} (other work on the machine inflates "
          "the times)")
    with tempfile.TemporaryDirectory() as tmp:
        bench("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.trials, args.repeat, args.seed)
    if args.no_postgres:
        return
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    name = f"mpsearch_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(args.pg_admin).set(database=name).render_as_string(hide_password=False)
        bench("PostgreSQL", url, args.trials, args.repeat, args.seed)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
