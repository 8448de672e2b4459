"""Synthetic searches with a known optimum: a space, objectives, and an in-memory recorder.

Objectives are plain functions of a candidate, driven through the real loop (``run_search`` with
``SerialExecutor``), so every strategy is tested through the same ask/tell path as in production.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from mpsearch.searcher import SerialExecutor, run_search
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Budget, Candidate, Cost, Gene, LayerInfo, SearchSpace

OPTIONS = tuple([QuantOption("int", b, 128, False) for b in (2, 3, 4, 8)]
                + [QuantOption("fp16", 16, None)])
# The level set of examples/minilm.yaml: dense integer levels, as in EvoPress's experiments.
DENSE = tuple([QuantOption("int", b, 128, False) for b in (2, 3, 4, 5, 6, 8)]
              + [QuantOption("fp16", 16, None)])


@dataclass
class MemoryRecorder:
    """The loop's recorder, in memory: every started trial with its feasibility and result."""

    trials: list[dict] = field(default_factory=list)

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        self.trials.append({"candidate": candidate, "feasible": feasible, "objective": None})
        return len(self.trials) - 1

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        self.trials[key]["objective"] = outcome.objective

    def best(self) -> tuple[float, Candidate]:
        done = [(t["objective"], t["candidate"]) for t in self.trials
                if t["feasible"] and t["objective"] is not None and t["candidate"].samples is None]
        return min(done, key=lambda x: x[0])


def make_space(n_genes: int, seed: int = 0, options=OPTIONS) -> SearchSpace:
    """Genes of one layer each, of varied sizes (in_features a multiple of 128)."""
    rng = np.random.default_rng(seed)
    genes = []
    for g in range(n_genes):
        layer = LayerInfo(f"blocks.{g}.fc", 128 * int(rng.integers(1, 4)), 64 * int(rng.integers(1, 5)))
        genes.append(Gene(layer.name, (layer,), tuple(options)))
    return SearchSpace(tuple(genes))


def transformer_space(blocks: int, options=OPTIONS) -> SearchSpace:
    """Six layers per block shaped like a small BERT's (q, k, v, o square; the MLP 4× wider)."""
    shapes = {"q": (128, 128), "k": (128, 128), "v": (128, 128), "o": (128, 128),
              "fc1": (128, 512), "fc2": (512, 128)}
    genes = []
    for b in range(blocks):
        for name, (fan_in, fan_out) in shapes.items():
            layer = LayerInfo(f"blocks.{b}.{name}", fan_in, fan_out)
            genes.append(Gene(layer.name, (layer,), tuple(options)))
    return SearchSpace(tuple(genes))


@dataclass
class Additive:
    """f(x) = Σ_g d[g, x_g] (+ optional pairwise terms between neighbours), d falling with bits."""

    space: SearchSpace
    seed: int = 0
    interaction: float = 0.0
    noise_free: bool = True

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n, k = len(self.space.genes), max(self.space.sizes)
        scale = rng.lognormal(0, 1, size=n)
        bits = np.array([[o.bits for o in g.options] for g in self.space.genes], dtype=float)
        self.d = scale[:, None] * 2.0 ** (-bits) * rng.uniform(0.8, 1.2, size=(n, k))
        self.d[bits >= 16] = 0.0

    def low(self, c: Candidate) -> np.ndarray:
        return np.array([self.space.genes[g].options[o].bits <= 3 for g, o in enumerate(c.choices)])

    def __call__(self, c: Candidate) -> float:
        value = float(sum(self.d[g, o] for g, o in enumerate(c.choices)))
        if self.interaction:
            low = self.low(c)
            value += self.interaction * float(np.sum(low[1:] & low[:-1]))
        return value


def brute_force(space: SearchSpace, budget: Budget, f) -> tuple[float, Candidate]:
    best = (np.inf, None)
    for choices in itertools.product(*(range(n) for n in space.sizes)):
        c = Candidate(choices)
        if space.feasible(c, budget):
            v = f(c)
            if v < best[0]:
                best = (v, c)
    return best


def run(searcher, f, evaluations: int, slots: int = 1) -> MemoryRecorder:
    rec = MemoryRecorder()
    run_search(searcher, SerialExecutor(f, slots), rec, evaluations, searcher.space, searcher.budget)
    return rec


@pytest.fixture
def synthetic():
    """The helpers above, for tests (importlib mode cannot import a conftest directly)."""
    return type("Synthetic", (), {"make_space": staticmethod(make_space),
                                  "transformer_space": staticmethod(transformer_space), "Additive": Additive,
                                  "brute_force": staticmethod(brute_force), "run": staticmethod(run),
                                  "MemoryRecorder": MemoryRecorder, "DENSE": DENSE})
