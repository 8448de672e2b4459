"""Setting up the workers before the search, in phases a user can follow, the work spread out.

With ``N`` worker actors (their setup ``phased``), each runs, one step at a time:

1. *loading the model*, 2. *the full-precision reference*;
3. *layer statistics* (the Hessians) of the layers in its share, if it has work that needs them;
4. *level <option>*: its share of the level database (:mod:`mpsearch.workers.level_db`) that is
   not on disk yet, in tasks of one input width each (batched GPTQ, :mod:`~.level_build`);
5. *proxies*: the Hessian-weighted output errors of the layers of its share (``proxy: true``;
   a gene's is the sum over its layers, and a tie group may span blocks);

then the search, once every share is on disk: each worker reads what the others built when a
candidate first needs it. Shares are whole blocks dealt round-robin (:func:`~.level_build.plan_tasks`), so
each (layer, option) is computed exactly once across the workers. A worker that dies is
replaced (by the executor, as during the search) and the replacement redoes only what of the
dead worker's share is not on disk yet; every other worker keeps going.

Progress goes to a :class:`SetupListener` (the CLI draws it; the driver stores the phase in the
study row for ``mpsearch status``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from mpsearch.spaces.errors import MpsearchError
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import SearchSpace
from mpsearch.workers.errors import WorkerError
from mpsearch.workers.level_build import block_of, plan_tasks
from mpsearch.workers.level_db import LevelDatabase, stored_option
from mpsearch.workers.profile import profile_pairs
from mpsearch.workers.worker import WorkerSetup, level_database

from .executor import RayExecutor, first_line
from .levels import DEFAULT_ROOT, level_set, levels_root

__all__ = ["DEFAULT_ROOT", "SetUpWorkers", "level_set", "levels_root", "set_up_workers"]

Pair = tuple[str, QuantOption]
PROXY_CHUNK = 32  # (layer, option) pairs per proxy step: the bar moves, round trips stay few


class SetupListener(Protocol):
    """Receives the setup phases as they happen. ``key`` names a phase ("model", "reference",
    "statistics", "level:<option label>", "proxies"); ``text`` describes it."""

    def phase(self, key: str, text: str, total: int) -> None:
        """A phase starts, or its total changes (a replaced worker redoes a step)."""

    def advance(self, key: str, n: int = 1) -> None:
        """``n`` more units of the phase are done."""

    def finish(self, key: str) -> None:
        """The phase is complete."""


class QuietListener:
    def phase(self, key: str, text: str, total: int) -> None:
        pass

    def advance(self, key: str, n: int = 1) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


# -- the phases -------------------------------------------------------------------------------
@dataclass
class SetupResult:
    proxies: dict[tuple[str, str], float] | None
    # layer → fraction of calibration tokens routed to its expert (routed experts; when asked)
    routing: dict[str, float] | None = None
    computed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # worker → pairs
    replaced: int = 0


@dataclass
class _Step:
    method: str
    args: tuple[Any, ...]
    key: str  # the listener's phase
    units: int  # how far the phase moves when it is done


class _Plan:
    """What each slot must still do; rebuilt for a slot whose worker died."""

    def __init__(self, space: SearchSpace, db: LevelDatabase | None, workers: int,
                 proxies: bool, proxy_kind: str = "hessian") -> None:
        self.space, self.db, self.workers, self.proxies = space, db, workers, proxies
        # Hessian-weighted errors are kept in the level database; Fisher ones depend on the
        # objective too, and cost one backward pass: computed each time
        self.kind, self.stored_proxies = proxy_kind, db if proxy_kind == "hessian" else None
        self.shapes = {layer.name: (layer.out_features, layer.in_features)
                       for layer in space.layers}
        blocks = list(dict.fromkeys(block_of(layer.name) for layer in space.layers))
        self.owner = {b: i % workers for i, b in enumerate(blocks)}
        self.stored = [(layer.name, o) for gene in space.genes for layer in gene.layers
                       for o in gene.options if stored_option(o)]
        self.proxy_values: dict[tuple[str, str], float] = {}
        self.totals: dict[str, int] = {}  # units of each phase, for the listener
        self.done: dict[str, int] = {}

    def missing_pairs(self) -> list[Pair]:
        return self.db.missing(self.stored) if self.db is not None else []

    def missing_proxies(self) -> list[Pair]:
        """(layer, option) pairs whose proxy is neither computed nor stored."""
        if not self.proxies:
            return []
        return [(layer.name, o) for gene in self.space.genes for layer in gene.layers
                for o in gene.options if (layer.name, o.label) not in self.proxy_values
                and (self.stored_proxies is None
                     or self.stored_proxies.load_proxy(layer.name, o) is None)]

    def steps(self, slot: int) -> list[_Step]:
        """What slot ``slot`` must do, from loading the model to writing its share."""
        tasks = plan_tasks(self.missing_pairs(), self.shapes, self.workers,
                           self.owner)[slot] if self.db is not None else []
        mine = [(n, o) for n, o in self.missing_proxies() if self.owner[block_of(n)] == slot]
        hessians = [n for n, _ in mine] if self.kind in ("hessian", "kfac") else []
        names = list(dict.fromkeys([n for t in tasks for n in t.layers] + hessians))
        steps = [_Step("load_model", (), "model", 1), _Step("compute_reference", (), "reference", 1)]
        if names:
            steps.append(_Step("gather_statistics", (names,), "statistics", 1))
        steps += [_Step("build", (t,), "levels", len(t.pairs)) for t in tasks]
        steps += [_Step("layer_proxies", (mine[i:i + PROXY_CHUNK], self.kind), "proxies",
                        len(mine[i:i + PROXY_CHUNK])) for i in range(0, len(mine), PROXY_CHUNK)]
        if names:
            steps.append(_Step("flush_levels", (self.workers > 1,), "flush", 1))
        return steps


def _texts() -> dict[str, str]:
    return {"model": "loading the model", "reference": "full-precision reference",
            "statistics": "layer statistics (Hessians)", "proxies": "proxy errors (Hessian-weighted "
            "or Fisher)", "flush": "writing the level "
            "database"}


def _raise_setup_error(label: str, step: _Step, exc: BaseException) -> None:
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, MpsearchError):
        raise WorkerError(str(cause)) from None
    what = _texts().get(step.key, step.key)
    if step.method == "load_model":
        raise WorkerError(f"worker failed to start: {first_line(exc)}") from None
    raise WorkerError(f"worker {label} failed during setup ({what}): {first_line(exc)}") from None


def set_up_workers(executor: Any, space: SearchSpace, db: LevelDatabase | None,
                   manifest: dict[str, Any] | None = None, *, proxies: bool = False,
                   proxy_kind: str = "hessian", routing: bool = False,
                   listener: SetupListener | None = None) -> SetupResult:
    """Run the setup phases on ``executor``'s actors (see the module docstring).

    ``db``: the level set, as the workers' setup names it (:func:`~mpsearch.workers.worker.
    level_database`); None: no level database, each worker computes what it needs when it needs
    it. What a worker needs of the others' shares it reads when a candidate first needs it
    (:meth:`~mpsearch.workers.worker.Worker.apply_`, in parallel threads), so the search starts
    once every share is on disk. Returns the proxies (when asked) and what each worker computed.
    ``routing``: count where the calibration tokens are routed (one worker, one pass) and
    weight each routed expert's proxies by the fraction of tokens it receives (MC-MoE;
    docs/moe.md).

    Raises:
        WorkerError: a worker could not load the model, the level database cannot be written
            (one line naming the path and the cause), or workers kept dying.
    """
    listener = listener or QuietListener()
    if db is not None:
        db.create(manifest or {})
    n = len(executor.actors)
    plan = _Plan(space, db, n, proxies, proxy_kind)
    if db is not None:
        db.record_planned(plan.stored)
    result = SetupResult(None)
    queues = {slot: deque(plan.steps(slot)) for slot in range(n)}
    _announce(listener, plan, queues)
    _run(executor, queues, listener, plan, result)
    if routing:
        result.routing = ray.get(executor.actors[0].routing.remote())
    if proxies:  # the Fisher proxy averages over every token already: routing is in its values
        weights = result.routing if proxy_kind == "hessian" else None
        result.proxies = _all_proxies(space, plan.stored_proxies, plan.proxy_values, weights)
    return result


def _announce(listener: SetupListener, plan: _Plan, queues: dict[int, deque[_Step]]) -> None:
    totals: dict[str, int] = {}
    for steps in queues.values():
        for step in steps:
            if step.key == "levels":
                for option in step.args[0].options:
                    key = f"level:{option.label}"
                    totals[key] = totals.get(key, 0) + len(step.args[0].layers)
            elif step.key != "flush":
                totals[step.key] = totals.get(step.key, 0) + step.units
    for key, total in totals.items():
        text = f"level {key.removeprefix('level:')}" if key.startswith("level:") else _texts()[key]
        listener.phase(key, text, total)
    plan.totals = totals


def _run(executor: Any, queues: dict[int, deque[_Step]], listener: SetupListener, plan: _Plan,
         result: SetupResult) -> None:
    pending: dict[ray.ObjectRef, tuple[int, _Step]] = {}

    def submit(slot: int) -> None:
        if queues[slot]:
            step = queues[slot][0]
            actor = executor.actors[slot]
            pending[getattr(actor, step.method).remote(*step.args)] = (slot, step)

    for slot in queues:
        submit(slot)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            slot, step = pending.pop(ref)
            try:
                value = ray.get(ref)
            except RayActorError as exc:  # the worker died: replace it, redo what is not on disk
                executor._replace(slot, exc)
                result.replaced += 1
                queues[slot] = deque(plan.steps(slot))
                _grow_totals(listener, plan, queues[slot])
                submit(slot)
                continue
            except RayError as exc:
                _raise_setup_error(executor.labels[slot], step, exc)
            queues[slot].popleft()
            _done(listener, plan, step, value, result, executor.labels[slot])
            submit(slot)
    for key in plan.totals:
        listener.finish(key)


def _grow_totals(listener: SetupListener, plan: _Plan, steps: Iterable[_Step]) -> None:
    totals = plan.totals
    for step in steps:
        if step.key in ("model", "reference", "statistics") and step.key in totals:
            totals[step.key] += 1
            listener.phase(step.key, _texts()[step.key], totals[step.key])


def _advance(listener: SetupListener, plan: _Plan, key: str, n: int) -> None:
    """Move phase ``key`` by ``n``; it is finished once all its units are done."""
    listener.advance(key, n)
    plan.done[key] = plan.done.get(key, 0) + n
    if plan.done[key] >= plan.totals.get(key, 0):
        listener.finish(key)


def _done(listener: SetupListener, plan: _Plan, step: _Step, value: Any, result: SetupResult,
          label: str) -> None:
    if step.key == "levels":
        for option_label, count in value.items():
            _advance(listener, plan, f"level:{option_label}", count)
        return
    if step.key == "proxies":
        plan.proxy_values.update(value)
    elif step.key == "flush":
        result.computed[label] = [tuple(p) for p in value]
        return
    _advance(listener, plan, step.key, step.units)


def _all_proxies(space: SearchSpace, db: LevelDatabase | None,
                 computed: dict[tuple[str, str], float],
                 routing: dict[str, float] | None = None) -> dict[tuple[str, str], float]:
    """Every (gene, option label) proxy: the sum over the gene's layers of their values,
    computed now or read from the level database; with ``routing``, a routed expert's value
    times the fraction of tokens routed to it (the error per calibration token)."""
    def layer_value(name: str, option: QuantOption) -> float:
        if (name, option.label) in computed:
            return computed[(name, option.label)]
        stored = db.load_proxy(name, option) if db is not None else None
        assert stored is not None, f"proxy of {name} under {option.label} was not computed"
        return float(stored["hessian_error"])

    genes = {g.name: g for g in space.genes}
    weight = routing or {}
    return {(gene, option.label): sum(layer_value(layer.name, option) * weight.get(layer.name, 1.0)
                                      for layer in genes[gene].layers)
            for gene, option in profile_pairs(space)}


def finish_workers(executor: Any) -> None:
    """Wait for every worker's background level-database writes (before the actors stop)."""
    refs = [a.flush_levels.remote(True) for a in executor.actors]
    for ref in refs:
        try:
            ray.get(ref)
        except RayActorError:
            pass  # a dead worker's unwritten variants are built again by the next study
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, MpsearchError):
                raise WorkerError(str(cause)) from None
            raise




# -- the driver's side: one set of set-up workers per session ---------------------------------
class StudyPhaseListener:
    """Stores each phase's description in the study row (``mpsearch status``) and passes the
    events on to ``inner`` (the CLI's display), if any."""

    def __init__(self, store: Any, study_id: int, inner: SetupListener | None = None) -> None:
        self.store, self.study_id, self.inner = store, study_id, inner
        self._seen: set[str] = set()

    def phase(self, key: str, text: str, total: int) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self.store.set_study_phase(self.study_id, text)
        if self.inner is not None:
            self.inner.phase(key, text, total)

    def advance(self, key: str, n: int = 1) -> None:
        if self.inner is not None:
            self.inner.advance(key, n)

    def finish(self, key: str) -> None:
        if self.inner is not None:
            self.inner.finish(key)


class LevelRayExecutor(RayExecutor):
    """The search's executor, which lets the workers finish writing the level database before
    it stops them."""

    def shutdown(self) -> None:
        try:
            if self.actors:
                finish_workers(self)
        finally:
            super().shutdown()


class SetUpWorkers:
    """A job's Ray workers, started and set up once (:func:`set_up_workers`), for whichever asks
    first: the strategy for its proxies, or the driver for the loop's executor."""

    def __init__(self, job: Any, setup: WorkerSetup, store_url: str,
                 listener: SetupListener | None = None,
                 executor_options: dict[str, Any] | None = None, early: Any = None) -> None:
        """``early``: the job's :class:`~.prestart.EarlyWorkers`, whose actors become the
        workers (the level database's path is checked before they are taken)."""
        spec = job.spec
        root = levels_root(spec.levels, store_url)
        self.db_dir: Path | None
        self.db_dir, manifest = (None, None) if root is None else level_set(
            root, job.model.path, spec.model.dtype, job.texts, spec.calibration)
        db = None
        if self.db_dir is not None:  # an unwritable path fails here, before any worker starts
            setup = replace(setup, level_db=str(self.db_dir))
            db = level_database(setup)
            assert db is not None
            db.create(manifest or {})
        self.listener = listener or QuietListener()
        w = spec.workers
        options = {"depth": w.depth, **(executor_options or {})}
        if early is not None and "actor_cls" not in options:
            options["started"] = early.take()
        self._executor: LevelRayExecutor | None = LevelRayExecutor(
            setup, job.space, w.count, w.cpus, w.gpus, **options)
        try:
            self.result = set_up_workers(self._executor, job.space, db, manifest,
                                         proxies=setup.proxies, proxy_kind=setup.proxy_kind,
                                         routing=setup.routing, listener=self.listener)
        except BaseException:
            self.close()
            raise

    def proxies(self) -> dict[tuple[str, str], float]:
        return dict(self.result.proxies or {})

    def routing(self) -> dict[str, float]:
        return dict(self.result.routing or {})

    def executor(self, recorder: Any) -> LevelRayExecutor:
        assert self._executor is not None, "the workers were closed"
        self._executor.before_dispatch = recorder.flush
        self._executor.flush_due = recorder.due_in
        self.listener.phase("search", "searching", 0)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown()
