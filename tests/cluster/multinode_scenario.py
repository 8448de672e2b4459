"""A search on a 2-node local Ray cluster with a failure injected; run as its own process.

``python multinode_scenario.py SCENARIO DB_URL EVALUATIONS`` starts a ``ray.cluster_utils.Cluster``
(a head and one worker node, its own temp dir), runs a session of the product's driver
(``cluster/driver.py``) with the real executor over a cheap deterministic actor, and injects
``SCENARIO`` mid-search: ``kill-actor`` (SIGKILL one worker's process) or ``remove-node`` (the
worker node disappears).
It prints one JSON line: what the executor saw. The caller checks the database.

A multi-node cluster cannot share a process with the test session's Ray instance, hence a script.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import ray
from ray.cluster_utils import Cluster

from mpsearch.cluster.driver import drive
from mpsearch.cluster.executor import RayExecutor
from mpsearch.searcher import SearcherConfig
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import TrialStore

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))


def make_space(n_layers: int = 10):
    rng = random.Random(1)
    layers = [LayerInfo(f"blocks.{i}.fc", 128 * rng.choice([1, 2, 4]), 128 * rng.choice([1, 2]))
              for i in range(n_layers)]
    return build_space(layers, [LayerRule("blocks", OPTIONS)], (), None)


@ray.remote
class SleepyActor:
    """A worker whose objective is a fixed function of the candidate, after ``delay`` seconds."""

    def __init__(self, delay, space, label):
        self.delay, self.space = delay, space
        self.label = f"{label}@{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"

    def name(self):
        return self.label

    def pid(self):
        return os.getpid()

    def evaluate(self, candidate):
        from mpsearch.workers.worker import EvalOutcome

        time.sleep(self.delay)
        value = sum((i + 1) * 2.0 ** -g.options[c].bits
                    for i, (g, c) in enumerate(zip(self.space.genes, candidate.choices, strict=True)))
        return self.label, EvalOutcome(value, self.delay)


def main(scenario: str, url: str, evaluations: int) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker_node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    space, budget = make_space(), Budget(avg_bits=4.25)
    store = TrialStore(url)
    study, _ = store.open_study(scenario, {}, {}, space, "synthetic", "sum", evaluations)
    config = SearcherConfig(name="evolutionary", params={"offspring": 6})
    seen: dict = {}
    results, injected = 0, False
    worker_node_id = worker_node.node_id[:8]
    executor: RayExecutor | None = None

    def make_executor(recorder):
        nonlocal executor
        executor = RayExecutor(0.2, space, 3, cpus=1, actor_cls=SleepyActor,
                               before_dispatch=recorder.flush, flush_due=recorder.due_in,
                               start_timeout=60)
        seen["nodes_at_start"] = sorted({label.split("@")[1].split(":")[0]
                                         for label in executor.labels})
        return executor

    def inject(*_):
        """Once a third of the results are in, hit a worker that is evaluating right now."""
        nonlocal results, injected
        assert executor is not None
        results += 1
        busy = [executor.actors[f.slot] for f in executor.running.values()
                if scenario == "kill-actor"
                or executor.labels[f.slot].split("@")[1].startswith(worker_node_id)]
        if injected or results < evaluations // 3 or not busy:
            return
        injected = True
        if scenario == "kill-actor":
            os.kill(ray.get(busy[0].pid.remote()), signal.SIGKILL)
        else:
            cluster.remove_node(worker_node, allow_graceful=False)

    result = drive(store, study, config, budget, make_executor, on_result=inject)
    assert executor is not None
    print("RESULT", json.dumps({"completed": result.stats.completed,
                                "failed": result.stats.failed, "replaced": executor.replaced,
                                "redispatched": executor.redispatched, **seen}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
