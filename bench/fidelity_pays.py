"""Does multi-step selection pay? Evolution on one fidelity against screening, at equal compute.

Issue 16 asks for multi-fidelity selection "as the default where it pays". Evaluations are not
the currency here (a screen on 16 samples is an evaluation too, and much cheaper): compute is.
For each seed, the same EvoPress search runs with one stage (every offspring on all ``--samples``)
and with ``selection: [[16, S/8], [4, null]]`` (16 offspring screened on the first S/8 samples,
the best 4 scored on all of them), each for ``--seconds`` of evaluation time measured inside the
worker (the loop's own time is the same for both and left out). At each checkpoint the best
configuration scored on all samples is scored on held-out samples that no search and no GPTQ
Hessian saw.

    python bench/fidelity_pays.py --samples 128 --seconds 60 120 240 --seeds 3 --out OUT

Evaluated in-process with ``Worker``, as ``search_quality.py`` (whose scorers it uses).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from search_quality import SPACES, Scorer

from mpsearch.searcher import SearchContext, SearcherConfig, SerialExecutor, make_searcher, run_search
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces.space import Budget, Candidate, Cost, LayerRule, build_space
from mpsearch.spaces.spec import parse_option
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import Worker, WorkerSetup


class TimeUp(Exception):
    """The worker's seconds passed the last checkpoint."""


class TimedScorer(Scorer):
    """A scorer that adds up the worker's seconds and stops the run when they pass ``limit``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds, self.limit = 0.0, float("inf")

    def __call__(self, c: Candidate) -> float | None:
        key = (c.choices, c.samples)
        if key not in self.cache:
            if self.seconds >= self.limit:
                raise TimeUp
            outcome = self.worker.evaluate(c)
            self.seconds += outcome.seconds
            self.cache[key] = outcome.objective
        return self.cache[key]


class Clock:
    """The loop's recorder: the best full-fidelity result as the worker's seconds pass."""

    def __init__(self, scorer: TimedScorer) -> None:
        self.scorer, self.best = scorer, (float("inf"), None)
        self.steps: list[tuple[float, float, Candidate]] = []  # (seconds, value, candidate)
        self.screens = self.fulls = 0
        self.feasible: list[bool] = []

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        self.feasible.append(feasible)
        return len(self.feasible) - 1

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        if candidate.samples is None:
            self.fulls += 1
            if (self.feasible[key] and outcome.objective is not None
                    and outcome.objective < self.best[0]):
                self.best = (outcome.objective, candidate)
                self.steps.append((self.scorer.seconds, outcome.objective, candidate))
        else:
            self.screens += 1

    def at(self, seconds: float) -> Candidate | None:
        found = [c for s, _, c in self.steps if s <= seconds]
        return found[-1] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--space", choices=sorted(SPACES), default="rtn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=4.25)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--screen", type=int, default=None, help="default: samples // 8")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="samples per forward pass (a GPU takes all of them in one)")
    ap.add_argument("--stats-samples", type=int, default=256)
    ap.add_argument("--heldout-offset", type=int, default=896)
    ap.add_argument("--heldout-samples", type=int, default=256)
    ap.add_argument("--seconds", type=float, nargs="+", default=[60, 120, 240])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="bench-out/fidelity")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    screen = args.screen or max(args.samples // 8, 1)

    info = inspect_model(ModelConfig(name=args.model))
    pattern = r"(?:transformer\.h|model\.layers)\.\d+\." if info.kind == "causal-lm" \
        else r"encoder\.layer\.\d+\."
    space = build_space(info.layers, [LayerRule(pattern, tuple(parse_option(x)
                                                                for x in SPACES[args.space]))],
                        (), info.total_params)
    cal = CalibrationConfig(source="stdlib-docs", samples=args.samples, seq_len=args.seq_len)
    setup = WorkerSetup(model_path=info.path, kind=info.kind,
                        objective="kl" if info.kind == "causal-lm" else "embedding_distortion",
                        texts=(), seq_len=args.seq_len, device=args.device,
                        batch_size=args.batch_size)
    stats = Worker(replace(setup, texts=tuple(load_texts(
        cal.model_copy(update={"samples": args.stats_samples})))), space)
    stats.warm_cache()
    held = Scorer(setup, space, load_texts(cal.model_copy(update={
        "offset": args.heldout_offset, "samples": args.heldout_samples})), stats)
    budget = Budget(avg_bits=args.budget)
    modes = {"one stage": None, f"[[16, {screen}], [4, all]]": [[16, screen], [4, None]]}
    results: dict = {"args": vars(args), "runs": []}
    limit = max(args.seconds)
    for seed in range(args.seeds):
        for mode, selection in modes.items():
            scorer = TimedScorer(setup, space, load_texts(cal), stats)
            scorer.limit = limit
            clock = Clock(scorer)
            params = {"selection": selection} if selection else {}
            searcher = make_searcher(SearcherConfig(name="evolutionary", params=params), space,
                                     budget, seed, SearchContext(study=f"fidelity-{seed}"))
            start = time.perf_counter()
            with contextlib.suppress(TimeUp):
                run_search(searcher, SerialExecutor(scorer), clock, 1_000_000, space, budget)
            row = {"seed": seed, "mode": mode, "worker_seconds": scorer.seconds,
                   "wall_seconds": time.perf_counter() - start, "full": clock.fulls,
                   "screens": clock.screens, "at": {}}
            for s in args.seconds:
                best = clock.at(s)
                row["at"][str(s)] = None if best is None else held(best)
            results["runs"].append(row)
            (out / "results.json").write_text(json.dumps(results, indent=1))
            print(f"seed {seed} {mode}: {clock.fulls} full, {clock.screens} screens in "
                  f"{scorer.seconds:.0f} s; held-out " +
                  ", ".join(f"{s:g} s {v:.5f}" if v is not None else f"{s:g} s -"
                            for s, v in ((float(k), v) for k, v in row["at"].items())),
                  flush=True)


if __name__ == "__main__":
    main()
