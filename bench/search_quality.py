"""Search quality on MiniLM: every strategy, the same number of evaluations, held-out results.

For each budget (average effective bits) and seed, each strategy runs through the real loop
(``run_search``) for the largest evaluation count, with the uniform baselines first (they count,
as in production); the results at smaller counts are prefixes of that run (no strategy here
looks at the total). Every evaluation counts, the integer program's and the hybrid's profile
probes included. The best feasible configuration is chosen on the calibration samples and
**reported on held-out samples** (another offset of the same source), next to the best feasible
uniform configuration and a noise floor: the mean |difference| of one configuration's score on
two disjoint held-out sets. GPTQ variants are computed once, on ``--stats-samples`` calibration
samples, and shared by every scorer, so held-out scores never see GPTQ fitted to held-out text.
Evaluated in-process with ``Worker`` (no Ray).

    bench/search_quality_grid.sh MODEL_DIR OUT full rtn     # the grid, parallel on one GPU
    python bench/search_quality.py --report OUT/*/results.json --out OUT   # tables and plots
    python bench/search_quality.py --evaluations 20 --seeds 1 --strategies evolutionary   # smoke
    python bench/search_quality.py --frontier --budgets 3.0 3.5 4.0 4.5 --evaluations 250

``--frontier`` (:func:`frontier_cost`) answers another question: does one frontier study over
``--budgets`` cost fewer evaluations than one study per budget, for the same held-out quality at
each budget?
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mpsearch.searcher import SearchContext, SearcherConfig, SerialExecutor, make_searcher, run_search
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces.space import Budget, Candidate, Cost, LayerRule, build_space
from mpsearch.spaces.spec import parse_option
from mpsearch.workers.calibration import load_texts
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.profile import measure_proxies, profile_pairs
from mpsearch.workers.worker import Worker, WorkerSetup

SPACES = {
    # examples/minilm.yaml's space: round-to-nearest integers only
    "rtn": ["int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int5-g128-asym",
            "int6-g128-asym", "int8-g128-asym", "fp16"],
    # the full space: GPTQ levels beside RTN, another group size, 4-bit float formats, fp8
    "full": ["int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int5-g128-asym",
             "int6-g128-asym", "int8-g128-asym",
             "int2-g128-asym-gptq", "int3-g128-asym-gptq", "int3-g64-asym-gptq",
             "int4-g128-asym-gptq", "int5-g128-asym-gptq", "int6-g128-asym-gptq",
             "nf4", "mxfp4", "fp8_e4m3", "fp16"],
    # the full space with a finer GPTQ grid (int2/int4 at g64, int8): does the program use it?
    "full-g64": ["int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int5-g128-asym",
                 "int6-g128-asym", "int8-g128-asym",
                 "int2-g128-asym-gptq", "int2-g64-asym-gptq", "int3-g128-asym-gptq",
                 "int3-g64-asym-gptq", "int4-g128-asym-gptq", "int4-g64-asym-gptq",
                 "int5-g128-asym-gptq", "int6-g128-asym-gptq", "int8-g128-asym-gptq",
                 "nf4", "mxfp4", "fp8_e4m3", "fp16"],
    # the full space with cheaper cost points between its levels: GPTQ with one scale per
    # channel (int3-ch: 3.08 bits on a 384-wide layer) and symmetric groups (no zero points)
    "wide": ["int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int5-g128-asym",
             "int6-g128-asym", "int8-g128-asym",
             "int2-g128-asym-gptq", "int3-ch-asym-gptq", "int3-g128-sym-gptq",
             "int3-g128-asym-gptq", "int3-g64-asym-gptq", "int4-ch-asym-gptq",
             "int4-g128-sym-gptq", "int4-g128-asym-gptq", "int5-ch-asym-gptq",
             "int5-g128-asym-gptq", "int6-g128-asym-gptq", "int8-ch-sym-gptq",
             "nf4", "mxfp4", "fp8_e4m3", "fp16"],
}

# the full and wide spaces with every GPTQ level in activation order (static groups, same storage)
SPACES.update({f"{name}-act": [o.replace("-gptq", "-gptq-act") for o in SPACES[name]]
               for name in ("full", "wide")})
# ... and every integer level of those on MSE-clipped grids (RTN -clip, GPTQ -clip-gptq[-act]):
# the same formats and costs, each grid's range searched
SPACES.update({f"{name}-clip": [re.sub(r"^(int\d+-(?:ch|g\d+)-a?sym)", r"\1-clip", o)
                                for o in SPACES[name]]
               for name in ("full", "full-act", "wide-act")})
# full-act with both grids of every integer level, min/max and clipped: the search picks per layer
SPACES["full-act-both"] = SPACES["full-act"] + [o for o in SPACES["full-act-clip"] if "-clip" in o]


def profile_levels(bits: float, space: str) -> list[str]:
    """The three integer levels around the budget: the profile entries worth measuring (GPTQ's
    in the full and wide spaces, where it beats RTN at every level)."""
    low = max(2, math.floor(bits) - 1)
    suffix = "-gptq-act" if "-act" in space else \
        "-gptq" if space.startswith(("full", "wide")) else ""
    clip = "-clip" if space.endswith("-clip") else ""
    return [f"int{b}-g128-asym{clip}{suffix}" for b in range(low, low + 3)]


def strategies(bits: float, space: str) -> dict[str, dict]:
    prof = {"profile_options": profile_levels(bits, space)}
    return {
        "random": {"name": "random"},
        "evolutionary": {"name": "evolutionary"},
        "evolutionary-population": {"name": "evolutionary-population"},
        "optuna-tpe": {"name": "optuna", "params": {"sampler": "tpe"}},
        # optuna-gp runs only when named and to --gp-max evaluations: its ask takes seconds
        "optuna-gp": {"name": "optuna", "params": {"sampler": "gp"}},
        "integer-program": {"name": "integer-program", "params": {**prof, "solutions": 4}},
        "hybrid": {"name": "hybrid", "params": {**prof, "seeds": 4}},
        # one probe per layer, every option of the space scaled by the proxy (see PROXIED)
        "integer-program-proxy": {"name": "integer-program", "params": {"proxy": True,
                                                                        "solutions": 4}},
        "hybrid-proxy": {"name": "hybrid", "params": {"proxy": True, "seeds": 4}},
    }


# Strategies that use the proxy errors: these come from a pass over the calibration samples that
# gathers the Hessians, charged here as one evaluation (their N-evaluation figure is the best of
# their first N - 1 trials).
PROXIED = ("integer-program-proxy", "hybrid-proxy")


# The protocol of issue 16 (``--set confirm``): calibration at scale, paid for only where it counts.
# Evolution and the hybrid screen offspring on the first ``screen`` calibration samples and
# confirm the best four on all of them (EvoPress's multi-step selection, common random numbers:
# every candidate of a stage on the same samples); the profile strategies score everything on
# all of them. The figure at N evaluations is chosen by re-scoring the top ``--confirm-top`` of
# the first N − top on the larger confirmation set (charged as evaluations): see confirmed_best.
def confirm_strategies(screen: int) -> dict[str, dict]:
    stages = [[16, screen], [4, None]]
    return {
        "random": {"name": "random"},
        "optuna-tpe": {"name": "optuna", "params": {"sampler": "tpe"}},
        "evolutionary": {"name": "evolutionary", "params": {"selection": stages}},
        # one probe per layer scales the Hessian-weighted error (the proxy strategy of before)
        "integer-program-hessian": {"name": "integer-program",
                                    "params": {"proxy": "hessian", "solutions": 4}},
        # the Fisher proxy is the profile: no probe
        "integer-program-fisher": {"name": "integer-program",
                                   "params": {"proxy": "fisher", "anchors": False,
                                              "solutions": 4}},
        # its Kronecker-factored form (keeps GPTQ's input correlations): no probe either
        "integer-program-kfac": {"name": "integer-program",
                                 "params": {"proxy": "kfac", "anchors": False, "solutions": 4}},
        # the Hessian program's optima (the best single strategy on GPT-2, H200, and on MiniLM,
        # CPU) seed the evolution, which only moves on confirmed improvements
        "hybrid": {"name": "hybrid", "params": {"proxy": "hessian", "seeds": 4,
                                                "selection": stages}},
        # the same, seeded by the K-FAC program: no probe
        "hybrid-kfac": {"name": "hybrid", "params": {"proxy": "kfac", "anchors": False,
                                                     "seeds": 4, "selection": stages}},
    }


def proxy_kind(config: dict) -> str | None:
    """The proxy a strategy's parameters ask for (None: none)."""
    proxy = config.get("params", {}).get("proxy", False)
    return None if proxy is False else "hessian" if proxy is True else proxy


def confirmed_best(trace: Trace, n: int, top: int, confirm: Scorer) -> tuple[float, Candidate] | None:
    """The configuration named at ``n`` evaluations: the ``top`` best full-fidelity results of
    the first ``n - top`` re-scored on the confirmation set (those ``top`` evaluations charged),
    the lowest confirmed one. Returns (calibration objective, candidate)."""
    done: dict[tuple[int, ...], tuple[float, Candidate]] = {}
    for c, ok, v in trace.trials[:max(n - top - trace.charged, 0)]:
        if ok and v is not None and c.samples is None and (c.choices not in done
                                                           or v < done[c.choices][0]):
            done[c.choices] = (v, c)
    ranked = sorted(done.values(), key=lambda x: x[0])[:top]
    if not ranked:
        return None
    return min(ranked, key=lambda x: confirm(x[1]) or math.inf)


class Scorer:
    """One worker per sample set; scores cached by configuration."""

    def __init__(self, setup: WorkerSetup, space, texts, variants: Worker | None = None) -> None:
        self.worker = Worker(replace(setup, texts=tuple(texts)), space)
        if variants is not None:  # GPTQ calibrated on the statistics samples, whoever scores
            self.worker.share_variants(variants)
        self.cache: dict[tuple[tuple[int, ...], int | None], float | None] = {}

    def __call__(self, c: Candidate) -> float | None:
        key = (c.choices, c.samples)
        if key not in self.cache:
            self.cache[key] = self.worker.evaluate(c).objective
        return self.cache[key]


class Trace:
    """The loop's recorder: every trial in order, and its feasibility; ``charged`` evaluations
    spent before the first trial (the proxy pass) shift every count. As the ``n``-th evaluation
    finishes, for each ``n`` of ``counts``, it calls ``passed(trace, n)``: so a run cut off keeps
    the figures of the counts it passed."""

    def __init__(self, charged: int = 0, counts: tuple[int, ...] = (),
                 passed: Callable[[Trace, int], None] | None = None) -> None:
        self.trials: list[tuple[Candidate, bool, float | None]] = []
        self.charged = charged
        self.counts, self.passed, self.finished = set(counts), passed, 0

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        self.trials.append((candidate, feasible, None))
        return len(self.trials) - 1

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        self.trials[key] = (candidate, self.trials[key][1], outcome.objective)
        self.finished += 1
        if self.passed is not None and self.finished + self.charged in self.counts:
            self.passed(self, self.finished + self.charged)

    def best(self, first: int) -> tuple[float, Candidate] | None:
        done = [(v, c) for c, ok, v in self.trials[:max(first - self.charged, 0)]
                if ok and v is not None and c.samples is None]
        return min(done, key=lambda x: x[0]) if done else None

    def curve(self) -> list[list[float]]:
        """Best so far as [evaluations, value] at each improvement (the steps of the plot)."""
        out, best = [], math.inf
        for i, (c, ok, v) in enumerate(self.trials):
            if ok and v is not None and c.samples is None and v < best:
                best = v
                out.append([i + 1 + self.charged, v])
        return out


def best_so_far(steps: list, n: int) -> list[float | None]:
    """The curve at every evaluation 1..n, from its steps (or as stored, if already dense)."""
    if not steps or not isinstance(steps[0], list):
        return steps[:n]
    out: list[float | None] = []
    value = None
    it = iter(steps)
    step = next(it, None)
    for i in range(1, n + 1):
        while step is not None and step[0] <= i:
            value, step = step[1], next(it, None)
        out.append(value)
    return out


def merge(paths: list[Path]) -> dict:
    """One results dict from runs made in parallel (other strategies or budgets, same args)."""
    merged: dict = {}
    for path in paths:
        part = json.loads(path.read_text())
        if not merged:
            merged = part
            continue
        for key, entry in part["budgets"].items():
            mine = merged["budgets"].setdefault(key, entry)
            if mine is not entry:
                for name, runs in entry["runs"].items():
                    mine["runs"].setdefault(name, []).extend(runs)
                for label, figures in entry.get("uniforms", {}).items():  # --kl-check's, say
                    mine.setdefault("uniforms", {}).setdefault(label, {}).update(figures)
    return merged


def heldout_at(run: dict, n: int) -> float | None:
    """One seed's held-out figure at ``n`` evaluations (None: it did not reach ``n``)."""
    return (run["at"].get(str(n)) or run["at"].get(n) or {}).get("heldout")


def mean_heldout(runs: list[dict], n: int) -> float | None:
    """Mean held-out figure at ``n`` evaluations of the seeds that reached it (None: none)."""
    vals = [v for v in (heldout_at(r, n) for r in runs) if v is not None]
    return sum(vals) / len(vals) if vals else None


def target_lines(entry: dict, noise: float) -> list[str]:
    """Issue 16's checks on one budget's table: the best at ≤ 250 evaluations against the best
    uniform configuration, 1,000 against 250 per strategy, the hybrid against every other."""
    u, runs = entry["uniform"]["heldout"], entry["runs"]
    at = {name: {n: mean_heldout(r, n) for n in (250, 1000)} for name, r in runs.items()}
    best = min(((v[250], name) for name, v in at.items() if v[250] is not None), default=None)

    def seeds(name: str, n: int) -> int:
        return sum(heldout_at(r, n) is not None for r in runs[name])

    out = []
    if best is not None:
        out.append(f"* Best at 250 evaluations: {best[1]} {best[0]:.5f} "
                   f"({seeds(best[1], 250)} seeds), "
                   f"{100 * (1 - best[0] / u):.1f} % below the best uniform ({u:.5f}).")
    # paired: the seeds that reached 1,000, at 250 and at 1,000
    paired = {name: [r for r in runs[name] if heldout_at(r, 1000) is not None] for name in at}
    both = [name for name, r in paired.items() if r]
    gap = {name: (mean_heldout(paired[name], 1000) or 0.0) - (mean_heldout(paired[name], 250)
                                                              or 0.0) for name in both}
    worse = [f"{name} (+{gap[name]:.5f})" for name in both if gap[name] > noise]
    unmeasured = [name for name in at if name not in both]
    if not both:
        out.append("* 1,000 ≤ 250 evaluations: not measured (no seed reached 1,000).")
    else:
        out.append("* 1,000 ≤ 250 evaluations within the noise floor: " +
                   ("every strategy measured" if not worse else "not for " + ", ".join(worse)) +
                   " (seeds that reached 1,000: " +
                   ", ".join(f"{name} {len(paired[name])}" for name in both) + ")" +
                   (f"; not measured for {', '.join(unmeasured)}." if unmeasured else "."))
    if "hybrid" in at:
        for n in (250, 1000):
            mine = at["hybrid"][n]
            others = {k: v[n] for k, v in at.items() if k != "hybrid" and v[n] is not None}
            if mine is None or not others:
                continue
            rival = min(others, key=lambda k: others[k])
            verdict = "within" if mine <= others[rival] + noise else "above"
            out.append(f"* Hybrid at {n}: {mine:.5f} ({seeds('hybrid', n)} seeds), best other "
                       f"{rival} {others[rival]:.5f} ({seeds(rival, n)} seeds; {verdict} the "
                       f"noise floor).")
    return out + [""]


def kl_check_lines(uniforms: dict) -> list[str]:
    """How the top-k KL of every uniform configuration compares with its full-vocabulary KL
    (``--kl-check``): the ratio's range and whether both orders agree."""
    pairs = [(v["heldout"], v["heldout_full"]) for v in uniforms.values() if "heldout_full" in v]
    if not pairs:
        return []
    ratios = [k / f for k, f in pairs if f > 0]
    same = sorted(range(len(pairs)), key=lambda i: pairs[i][0]) == \
        sorted(range(len(pairs)), key=lambda i: pairs[i][1])
    return [f"* Top-k KL / full-vocabulary KL, held-out, {len(pairs)} uniform configurations: "
            f"{min(ratios):.4f}–{max(ratios):.4f}; the two orders "
            f"{'agree' if same else 'differ'}.", ""]


def report(results: dict, out: Path) -> str:
    """The markdown table (mean ± sd over seeds of the held-out objective) and one PNG per budget
    of best-so-far (calibration) vs evaluations."""
    import statistics

    lines = []
    evals = results["args"]["evaluations"]
    model_name = Path(results.get("model", {}).get("path", "MiniLM")).name
    for key, entry in results["budgets"].items():
        bits, _, space = key.partition("-")
        space = space or "rtn"
        u = entry["uniform"]
        noise = [abs(u["heldout"] - u["fresh"])]
        lines += [f"### {bits} effective bits, {space} space", "",
                  f"Uniform baseline ({u['label']}): held-out {u['heldout']:.5f} "
                  f"(calibration {u['calib']:.5f}).", "",
                  "Every uniform configuration within budget, held-out: " + ", ".join(
                      f"{label.split('×')[0]} {v['heldout']:.5f}"
                      for label, v in sorted(entry.get("uniforms", {}).items(),
                                             key=lambda kv: kv[1]["heldout"])) + ".", "",
                  "| strategy | seeds (count reached) | " +
                  " | ".join(f"{n} evals" for n in evals) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in evals) + " |"]
        for name, runs in entry["runs"].items():
            cells = []
            for n in evals:
                vals = [r["at"][str(n)]["heldout"] if str(n) in r["at"] else r["at"].get(n, {}).get(
                    "heldout") for r in runs]
                vals = [v for v in vals if v is not None]
                for r in runs:
                    a = r["at"].get(str(n)) or r["at"].get(n)
                    if a:
                        noise.append(abs(a["heldout"] - a["fresh"]))
                if not vals:
                    cells.append("n/a")
                else:  # over the seeds that reached n; their number where not every seed did
                    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    cells.append(f"{statistics.mean(vals):.5f} ± {sd:.5f}" +
                                 (f" ({len(vals)} seeds)" if len(vals) < len(runs) else ""))
            reached = ", ".join(str(r.get("reached", max(map(int, r["at"]), default=0)))
                                for r in runs)
            lines.append(f"| {name} | {len(runs)} ({reached}) | " + " | ".join(cells) + " |")
        lines += ["", f"Noise floor (one configuration, two disjoint held-out sets, mean "
                      f"|difference| over {len(noise)} configurations): {statistics.mean(noise):.5f}.",
                  ""]
        lines += target_lines(entry, statistics.mean(noise))
        lines += kl_check_lines(entry.get("uniforms", {}))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, runs in entry["runs"].items():
            n = max(int(k) for r in runs for k in r["at"]) if any(r["at"] for r in runs) else 0
            curves = [best_so_far(r["curve"], n) for r in runs]
            n = min(len(c) for c in curves)
            xs, ys = [], []
            for i in range(n):
                vals = [c[i] for c in curves if c[i] is not None]
                if len(vals) == len(curves):
                    xs.append(i + 1)
                    ys.append(statistics.mean(vals))
            ax.plot(xs, ys, label=name)
        ax.axhline(u["calib"], color="gray", ls="--", label="uniform (calibration)")
        ax.set(xscale="log", yscale="log", xlabel="evaluations", ylabel="best so far (calibration)",
               title=f"{model_name}, {bits} effective bits, {space} space, mean over seeds")
        ax.set_ylim(top=1.5 * u["calib"])  # the baselines above it are the same in every run
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"search_quality_{bits}_{space}.png", dpi=120)
        plt.close(fig)
    text = "\n".join(lines)
    (out / "table.md").write_text(text)
    return text


def best_within(trace: Trace, first: int, budget: Budget, space) -> Candidate | None:
    """The best full-fidelity configuration within ``budget`` among the first ``first`` trials."""
    done = [(v, c) for c, _, v in trace.trials[:max(first - trace.charged, 0)]
            if v is not None and c.samples is None and space.feasible(c, budget)]
    return min(done, key=lambda x: x[0])[1] if done else None


def frontier_cost(args, space, calib: Scorer, held: Scorer, fresh: Scorer, proxy, out: Path) -> dict:
    """One frontier study over ``--budgets`` against one study per budget, per strategy and seed.

    Each separate study runs ``max(--evaluations)`` = N evaluations (baselines included); the
    frontier study runs up to len(budgets) × N. Its *cost* is the first count (on a grid of N/10)
    at which its best configuration within every budget, chosen on calibration, is as good on
    held-out data as that budget's separate study after N, within the noise floor (the mean
    |held-out − fresh| of the separate studies' results). Strategies whose parameters do not
    depend on the budget suit it (evolutionary, the proxy variants): one set serves every point.
    """
    budgets = [Budget(avg_bits=b) for b in sorted(args.budgets)]
    n = max(args.evaluations)
    names = args.strategies or ["evolutionary"]
    results: dict = {"args": vars(args), "device": args.device, "mode": "frontier", "runs": {}}
    for name in names:
        cfg = SearcherConfig(**strategies(budgets[0].avg_bits or 0.0, args.space)[name])
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            context = SearchContext(study=f"{name}-{seed}", proxy=proxy)
            separate, noise = [], []
            for budget in budgets:
                trace = Trace(charged=int(name in PROXIED))
                run_search(make_searcher(cfg, space, budget, seed, context), SerialExecutor(calib),
                           trace, n - trace.charged, space, budget)
                best = best_within(trace, n, budget, space)
                assert best is not None
                separate.append({"avg_bits": budget.avg_bits, "evaluations": n,
                                 "calib": calib(best), "heldout": held(best)})
                noise.append(abs(held(best) - fresh(best)))
            floor = sum(noise) / len(noise)
            trace = Trace(charged=int(name in PROXIED))
            top = n * len(budgets)
            searcher = make_searcher(cfg, space, budgets[-1], seed, context, frontier=budgets)
            start = time.perf_counter()
            run_search(searcher, SerialExecutor(calib), trace, top - trace.charged, space,
                       budgets[-1])
            seconds = time.perf_counter() - start
            grid = sorted({max(n // 10, 1) * k for k in range(1, 10 * len(budgets) + 1)} | {top})
            curve, cost = [], None
            for m in (m for m in grid if m <= top):
                picks = [best_within(trace, m, b, space) for b in budgets]
                if any(c is None for c in picks):
                    continue
                values = [held(c) for c in picks if c is not None]
                curve.append([m, values])
                if cost is None and all(v <= s["heldout"] + floor
                                        for v, s in zip(values, separate, strict=True)):
                    cost = m
            results["runs"].setdefault(name, []).append({
                "seed": seed, "noise_floor": floor, "separate": separate,
                "separate_evaluations": n * len(budgets), "frontier_evaluations": cost,
                "frontier_heldout_at_end": curve[-1][1] if curve else None,
                "frontier_seconds": seconds, "frontier_curve": curve})
            (out / "frontier.json").write_text(json.dumps(results, indent=1))
            print(f"{name} seed={seed}: separate {n * len(budgets)} evaluations, frontier "
                  f"{cost} for the same held-out at every budget (floor {floor:.2g})", flush=True)
    return results


def frontier_table(results: dict) -> str:
    """Markdown: per strategy and seed, both costs and the held-out figures at each budget."""
    budgets = sorted(results["args"]["budgets"])
    head = " | ".join(f"{b:g} bits: separate / frontier" for b in budgets)
    lines = [f"| strategy | seed | separate studies | frontier study | {head} |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in budgets) + " |"]
    for name, runs in results["runs"].items():
        for r in runs:
            end = r["frontier_heldout_at_end"] or [None] * len(budgets)
            at = next((v for m, v in r["frontier_curve"] if m == r["frontier_evaluations"]), end)
            cells = " | ".join(f"{s['heldout']:.4g} / {v:.4g}" if v is not None else "—"
                               for s, v in zip(r["separate"], at, strict=True))
            cost = r["frontier_evaluations"]
            lines.append(f"| {name} | {r['seed']} | {r['separate_evaluations']} | "
                         f"{cost if cost is not None else 'not reached'} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--space", choices=sorted(SPACES), default="rtn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budgets", type=float, nargs="+", default=[3.0, 4.25])
    ap.add_argument("--evaluations", type=int, nargs="+", default=[50, 200, 250, 1000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1, ...")
    ap.add_argument("--strategies", nargs="+", default=None, help="default: all")
    ap.add_argument("--gp-max", type=int, default=200,
                    help="evaluations for optuna-gp at most (its ask slows with every trial)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--calib-offset", type=int, default=0,
                    help="the first calibration sample (--calib-offset = --heldout-offset "
                         "searches on the held-out samples themselves: an oracle, the most any "
                         "search of the space can get below uniform on them)")
    ap.add_argument("--stats-samples", type=int, default=256,
                    help="calibration samples for GPTQ's Hessians (the first ones, as --samples)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="samples per forward pass (a GPU takes all of them in one)")
    ap.add_argument("--heldout-offset", type=int, default=900)
    ap.add_argument("--heldout-samples", type=int, default=128)
    ap.add_argument("--noise-offset", type=int, default=500)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--frontier", action="store_true",
                    help="one frontier study over --budgets against one study per budget")
    ap.add_argument("--set", choices=["default", "confirm"], default="default",
                    help="strategies: today's, or issue 16's (multi-fidelity, Fisher, "
                         "confirmation; see confirm_strategies)")
    ap.add_argument("--screen", type=int, default=32,
                    help="--set confirm: samples the first selection stage screens on")
    ap.add_argument("--confirm-samples", type=int, default=0,
                    help="confirmation set: the first N samples of the source (0: none)")
    ap.add_argument("--confirm-top", type=int, default=4,
                    help="configurations re-scored on the confirmation set at each count")
    ap.add_argument("--source", default="stdlib-docs", help="calibration source (a .jsonl path)")
    ap.add_argument("--objective", default=None, help="default: kl for causal LMs, else "
                                                      "embedding_distortion")
    ap.add_argument("--embeddings", action="store_true",
                    help="search the token embedding too (MiniLM's word_embeddings, a Llama's "
                         "untied embed_tokens) with the same options: effective bits then count "
                         "it (a tied embedding, GPT-2's, is its lm_head and is not added)")
    ap.add_argument("--layers", default=None, help="searched layers (regex); default: the "
                                                   "numbered blocks of the model")
    ap.add_argument("--kl-top-k", type=int, default=None,
                    help="KL on the reference's top-k tokens (k/V of its memory; default: the "
                         "full vocabulary)")
    ap.add_argument("--kl-check", action="store_true",
                    help="with --kl-top-k: also score every uniform configuration's held-out KL "
                         "at the full vocabulary (heldout_full), to see how top-k ranks them")
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls on the GPU (faster scores)")
    ap.add_argument("--report", nargs="+", default=None,
                    help="only redo the table and plots of results.json files (merged)")
    args = ap.parse_args()
    if args.report:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(report(merge([Path(p) for p in args.report]), Path(args.out)))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.tf32:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
    info = inspect_model(ModelConfig(name=args.model))
    causal = info.kind == "causal-lm"
    pattern = args.layers or (r"(?:transformer\.h|model\.layers)\.\d+\." if causal
                              else r"encoder\.layer\.\d+\.")
    if args.embeddings:
        pattern = rf"(?:{pattern})|^(?:embeddings\.word_embeddings|model\.embed_tokens)$"
    space_key = args.space + "+embedding" * args.embeddings  # the report's name of the space
    rule = LayerRule(pattern, tuple(parse_option(x) for x in SPACES[args.space]))
    space = build_space(info.layers, [rule], (), info.total_params)
    cal = CalibrationConfig(source=args.source, samples=args.samples, seq_len=args.seq_len)
    objective = args.objective or ("kl" if causal else "embedding_distortion")
    setup = WorkerSetup(model_path=info.path, kind=info.kind, objective=objective,
                        texts=(), seq_len=args.seq_len, device=args.device,
                        kl_top_k=args.kl_top_k, batch_size=args.batch_size)
    stats = Worker(replace(setup, texts=tuple(load_texts(cal.model_copy(
        update={"samples": args.stats_samples})))), space)
    stats.warm_cache()
    calib = Scorer(setup, space, load_texts(cal.model_copy(update={"offset": args.calib_offset})),
                   stats)
    held = Scorer(setup, space, load_texts(cal.model_copy(update={
        "offset": args.heldout_offset, "samples": args.heldout_samples})), stats)
    fresh = Scorer(setup, space, load_texts(cal.model_copy(update={
        "offset": args.noise_offset, "samples": args.heldout_samples})), stats)
    confirm = Scorer(setup, space, load_texts(cal.model_copy(
        update={"samples": args.confirm_samples})), stats) if args.confirm_samples else None
    top = max(args.evaluations)
    catalogue = strategies(0.0, args.space) if args.set == "default" else \
        confirm_strategies(args.screen)
    names = args.strategies or [n for n in catalogue if n != "optuna-gp"]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"search_quality: unknown strategy {unknown[0]!r} in --set "
                         f"{args.set}; valid: {', '.join(catalogue)}")
    proxied = {n for n in names if n in PROXIED or proxy_kind(catalogue[n]) is not None}
    kinds = {proxy_kind(catalogue[n]) or "hessian" for n in proxied}
    proxies = {kind: measure_proxies(calib.worker, profile_pairs(space), kind=kind)
               for kind in sorted(kinds)}
    if args.frontier:
        print(frontier_table(frontier_cost(args, space, calib, held, fresh,
                                           proxies.get("hessian"), out)))
        return
    results: dict = {"args": vars(args), "device": args.device, "budgets": {},
                     "model": {"path": info.path, "kind": info.kind, "objective": objective,
                               "genes": len(space.genes)}}

    def figures(trace: Trace, n: int) -> dict | None:
        """The configuration named at ``n`` evaluations and its held-out figures."""
        best = trace.best(n) if confirm is None else \
            confirmed_best(trace, n, args.confirm_top, confirm)
        if best is None:
            return None
        return {"calib": best[0], "heldout": held(best[1]),
                **({"confirmed": confirm(best[1])} if confirm else {}),
                "fresh": fresh(best[1]), "label": space.summarize(best[1]),
                "avg_bits": space.cost(best[1]).avg_bits, "choices": list(best[1].choices)}

    for bits in args.budgets:
        budget = Budget(avg_bits=bits)
        uniform = [space.uniform(o) for o in space.uniform_options()]
        feasible = [c for c in uniform if space.feasible(c, budget)]
        u_best = min(feasible, key=calib)
        entry = {"uniform": {"label": space.summarize(u_best), "calib": calib(u_best),
                             "heldout": held(u_best), "fresh": fresh(u_best)},
                 "uniforms": {space.summarize(c): {"calib": calib(c), "heldout": held(c)}
                              for c in feasible},
                 "runs": {}}
        if args.kl_check and args.kl_top_k and objective == "kl":
            full = Scorer(replace(setup, kl_top_k=None), space, held.worker.setup.texts, stats)
            for c in feasible:
                entry["uniforms"][space.summarize(c)]["heldout_full"] = full(c)
            del full  # its full-vocabulary reference: 4 bytes × tokens × vocabulary
            if args.device.startswith("cuda"):
                import gc

                import torch

                gc.collect()
                torch.cuda.empty_cache()
        chosen = strategies(bits, args.space) if args.set == "default" else catalogue
        for name in names:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                n_max = min(top, args.gp_max) if name == "optuna-gp" else top
                cfg = SearcherConfig(**chosen[name])
                proxy = proxies.get(proxy_kind(chosen[name]) or "hessian") \
                    if name in proxied else None
                searcher = make_searcher(cfg, space, budget, seed,
                                         SearchContext(study=f"{name}-{bits}-{seed}", proxy=proxy))
                counts = tuple(n for n in args.evaluations if n <= n_max)
                # the seed's record, written as the run passes each count: "reached" is the
                # last count passed (n_max once the loop ends, even early: a searcher with
                # nothing left to propose), "evaluations" those done, "at" the figures so far
                run: dict = {"seed": seed, "seconds": 0.0, "reached": 0, "at": {}, "curve": []}
                entry["runs"].setdefault(name, []).append(run)
                results["budgets"][f"{bits}-{space_key}"] = entry
                start = time.perf_counter()

                def passed(trace: Trace, n: int, run=run, start=start) -> None:
                    figure = figures(trace, n)
                    if figure is not None:
                        run["at"][n] = figure
                    run.update(reached=n, evaluations=trace.finished + trace.charged,
                               seconds=time.perf_counter() - start, curve=trace.curve())
                    (out / "results.json").write_text(json.dumps(results, indent=1))

                trace = Trace(charged=int(name in proxied), counts=counts, passed=passed)
                run_search(searcher, SerialExecutor(calib), trace, n_max - trace.charged, space,
                           budget)
                for n in counts:  # a loop that ended early: its last figure holds at every count
                    if n not in run["at"]:
                        passed(trace, n)
                run.update(reached=n_max, evaluations=trace.finished + trace.charged,
                           seconds=time.perf_counter() - start)
                (out / "results.json").write_text(json.dumps(results, indent=1))
                shown = {n: round(v["heldout"], 5) for n, v in run["at"].items()}
                print(f"bits={bits} {name} seed={seed} {run['seconds']:.0f}s held-out {shown}",
                      flush=True)
        results["budgets"][f"{bits}-{space_key}"] = entry
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(report(json.loads(json.dumps(results)), out))


if __name__ == "__main__":
    main()
