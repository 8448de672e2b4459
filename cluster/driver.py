"""The driver of a study session: lease → recover → replay → requeue → writer → loop → flush/close.

This is the one recipe every way of running a search goes through: ``mpsearch run`` and
``resume`` and a submitted job (via :func:`mpsearch.cluster.job.run_job`), the resume and fault
tests and the benchmarks. Each caller brings its own executor (Ray actors in production, a
function call in tests, no-op actors in the benchmark) through an :data:`ExecutorFactory`; the
driver owns everything else:

1. take the study's lease (:class:`~mpsearch.storage.lease.StudyLease`), so no second driver
   writes its trials;
2. mark the trials a dead driver left ``running`` as interrupted, add ``extend`` evaluations;
3. build the strategy with what its class declares it needs (:meth:`Searcher.needs`: a stored
   profile, proxy errors, a database for its own state), with the multi-step selection of the
   study's ``searcher.fidelity`` (:func:`session_strategy`), and replay the stored trials into it
   (:mod:`.resume`); candidates it asked for and never got back are re-dispatched first;
4. run the loop (:func:`~mpsearch.searcher.loop.run_search`) with a :class:`StoreRecorder` over the
   buffered :class:`~mpsearch.storage.writer.TrialWriter`: the one write path of trials;
5. with ``searcher.confirm: K``, re-score the K best configurations on every calibration sample
   and store that figure on their trials (:mod:`.confirm`), so ``best`` ranks by it;
6. flush what was learned, stop the executor, close the writer, set the study's status.

**What survives a crash.** A result counts (is *acknowledged*) once the writer committed it; the
writer commits in groups, at most ``window`` (50 ms) after a result (``storage/writer.py``). What
the searcher was told but the writer had not committed yet is, after a crash, exactly like an
evaluation in flight: the replay rebuilds the searcher to the last commit, and the trial is
dispatched again. An exception out of the loop (a worker error, a lost lease, Ctrl-C) still
flushes what was buffered before it propagates; only a killed process loses the uncommitted tail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mpsearch.searcher.base import Needs, SearchContext, Searcher
from mpsearch.searcher.loop import Executor, LoopStats, Outcome, run_search
from mpsearch.searcher.registry import (
    SearcherConfig,
    make_searcher,
    searcher_needs,
    with_fidelity,
)
from mpsearch.spaces.space import Budget, Candidate, Cost
from mpsearch.storage.lease import DEFAULT_TTL, StudyLease
from mpsearch.storage.models import FINISHED, STOPPED
from mpsearch.storage.profiles import ProfileKey, load_profile
from mpsearch.storage.store import StudyRecord, TrialStore
from mpsearch.storage.writer import TrialWriter

from .confirm import confirm_, plan_confirmation
from .mirror import SessionMirror, objectives_of, switch_strategy, told_first
from .resume import RequeueSearcher, replay
from .signals import record_stop, stop_reason


class SessionExecutor(Executor, Protocol):
    """An executor the driver can stop: the loop's :class:`Executor` plus ``shutdown``."""

    def shutdown(self) -> None: ...


# Builds the session's executor once the loop is about to run (nothing is started for a study
# that already has its evaluations). It receives the recorder: an executor calls
# ``recorder.flush`` before it dispatches and before it blocks on results, and while it blocks
# wakes after ``recorder.due_in()`` seconds to call it again (see ``RayExecutor``).
ExecutorFactory = Callable[["StoreRecorder"], SessionExecutor]


class JobResources(Protocol):
    """What the driver fetches for a strategy that declares a need beyond the space (see
    :class:`~mpsearch.searcher.base.Needs`); a session without it (tests, benchmarks) runs
    strategies that need nothing."""

    def profile_key(self) -> ProfileKey:
        """The key of the model's stored sensitivity profile (model, calibration, objective)."""
        ...

    def proxies(self) -> Mapping[tuple[str, str], float]:
        """The space's proxy errors by (gene, option label), computed where a worker runs, of
        the kind the strategy declared (``Needs.proxy_kind``, given to the workers' setup; with
        ``routing`` needed: each routed expert's weighted by its routing fraction)."""
        ...

    def routing(self) -> Mapping[str, float]:
        """Routed expert layer → the fraction of calibration tokens routed to its expert."""
        ...


@dataclass(frozen=True)
class SessionResult:
    """What a session did: the study afterwards, the loop's counts, what it resumed from."""

    study: StudyRecord
    stats: LoopStats
    seconds: float
    resumed_trials: int  # completed trials stored before this session
    requeued: int = 0  # candidates a stopped driver left in flight, dispatched again
    replay_note: str | None = None  # why the exact replay was abandoned, if it was
    mirror_note: str | None = None  # why the Optuna mirror could not be written, if it could not


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON (a non-finite float becomes its string), for the state snapshot."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_json_safe(v) for v in items]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class StoreRecorder:
    """The loop's recorder: trials are numbered in memory and written by the writer.

    ``flush`` runs (through the executor) before candidates are sent and before the driver blocks
    on results, and commits when the writer's group is due; an executor that waits calls it again
    after ``due_in`` seconds. It checks the lease first, so a driver that lost its study writes
    nothing more. ``flush(final=True)`` commits whatever is buffered.
    """

    def __init__(self, writer: TrialWriter, searcher: Searcher, lease: StudyLease | None = None,
                 state_every: float = 1.0, on_flush: Callable[[], None] | None = None) -> None:
        self.writer, self.searcher, self.lease = writer, searcher, lease
        self.state_every = state_every
        self.on_flush = on_flush  # after each commit (the Optuna mirror follows the store)
        self._state_at = -math.inf

    def start(self, candidate: Candidate, cost: Cost, feasible: bool) -> int:
        retry = self.searcher.retry_of(candidate) if isinstance(
            self.searcher, RequeueSearcher) else None
        return self.writer.start(candidate, cost.avg_bits, cost.total_bytes, feasible, retry)

    def finish(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        self.writer.finish(key, outcome.objective, outcome.worker or None, outcome.error,
                           outcome.seconds, outcome.extra)

    def flush(self, final: bool = False) -> None:
        if self.lease is not None:
            self.lease.check()
        now = time.monotonic()
        if final or now - self._state_at >= self.state_every:
            self.writer.set_state(_json_safe(self.searcher.state()))
            self._state_at = now
        if final:
            self.writer.flush(wait=True)  # the last commit waits out a database outage
        else:
            self.writer.maybe_flush()
        if self.on_flush is not None:
            self.on_flush()

    def due_in(self) -> float | None:
        """Seconds until buffered trials must be committed; None when nothing waits."""
        return self.writer.due_in()


def search_context(needs: Needs, study: StudyRecord, store: TrialStore,
                   resources: JobResources | None) -> SearchContext:
    """The context a strategy declared it needs; what a session cannot provide stays None (the
    strategy then measures its profile itself, or says what it lacks)."""
    profile = None
    if needs.profile and resources is not None:
        rows = load_profile(store, resources.profile_key())
        profile = {key: row.delta for key, row in rows.items() if row.delta is not None} or None
    proxy = resources.proxies() if needs.proxy and resources is not None else None
    routing = resources.routing() if needs.routing and resources is not None else None
    return SearchContext(study=study.name, profile=profile, proxy=proxy, routing=routing)


def session_strategy(study: StudyRecord, searcher: SearcherConfig,
                     device: str = "cpu") -> SearcherConfig:
    """``searcher`` with the multi-step selection of the study's ``searcher.fidelity`` on its
    calibration samples, for workers on ``device``
    (:func:`~mpsearch.searcher.registry.with_fidelity`). The study's stored spec decides, for a
    strategy switched to as well: a study stored before the field existed keeps scoring every
    candidate on every sample when it is resumed or rerun."""
    stored = study.spec.get("searcher")
    fidelity = stored.get("fidelity", "full") if isinstance(stored, dict) else "full"
    samples = study.calibration.samples if study.calibration is not None else None
    return with_fidelity(searcher.model_copy(update={"fidelity": fidelity}), samples, device)


def drive(store: TrialStore, study: StudyRecord, searcher: SearcherConfig, budget: Budget,
          make_executor: ExecutorFactory, *, seed: int = 0,
          frontier: Sequence[Budget] = (), resources: JobResources | None = None, extend: int = 0,
          lease_ttl: float = DEFAULT_TTL,
          on_start: Callable[[StudyRecord, int], None] | None = None,
          on_result: Callable[[LoopStats, Candidate, Outcome], None] | None = None,
          writer_options: Mapping[str, Any] | None = None,
          switch_to: SearcherConfig | None = None,
          optuna_mirror: bool = True,
          device: str = "cpu") -> SessionResult:
    """Run, continue or extend ``study`` (already opened in ``store``) until it has its completed
    evaluations; see the module docstring for the steps and what survives a crash.

    ``frontier`` (budget points, tightest first; ``budget`` is then the loosest) searches every
    point at once (``searcher/frontier.py``). ``on_start(study, completed)`` is called once the
    stored trials are replayed, ``on_result`` after every result; ``writer_options``
    (``group``, ``window``) tune the group commits.
    ``switch_to`` continues the study with another strategy from here on (recorded with the
    study; see :mod:`.mirror`); ``optuna_mirror=False`` keeps no Optuna mirror (a benchmark of
    the loop alone); ``device``, the workers' (cpu, cuda), decides where ``fidelity: auto`` screens.
    Raises :class:`~mpsearch.storage.lease.StudyLeasedError` when another driver holds the study,
    :class:`~mpsearch.storage.optuna_mirror.MirrorConflictError` when a foreign Optuna study
    has its name, and whatever the executor or the store raise (after flushing). A stop
    signal (a ``KeyboardInterrupt``, see :mod:`.signals`) marks the trials in flight interrupted
    before it propagates.
    """
    start = time.perf_counter()
    if switch_to is not None:
        switch_to.check()  # an unknown strategy or parameter: refused before anything is written
    with StudyLease(store, study.id, study.name, ttl=lease_ttl) as lease, \
            SessionMirror(store, study, enabled=optuna_mirror) as mirror:
        mirror.check()  # a foreign Optuna study of the name: refused before anything is written
        store.mark_running_failed(study.id, "driver stopped before the result arrived")
        if extend:
            store.set_evaluations(study.id, study.evaluations + extend)
        study = store.study(study.id)
        searcher, first = switch_strategy(store, study, searcher, switch_to)
        searcher = session_strategy(study, searcher, device)
        mirror.start(objectives_of(searcher))
        context = search_context(searcher_needs(searcher), study, store, resources)
        space = study.space
        trials = store.trials(study.id)
        earlier = [t for t in trials if t.number < first]

        def fresh() -> Searcher:
            made = make_searcher(searcher, space, budget, seed, context, frontier)
            return told_first(made, earlier) if first else made

        strategy, replayed = replay(fresh, trials, first=first)
        if on_start is not None:
            on_start(study, replayed.completed)
        remaining = study.evaluations - replayed.completed
        stats = LoopStats(stopped_because="the study already has its evaluations")
        confirming = bool(searcher.confirm) and plan_confirmation(trials, searcher.confirm).pending
        if remaining > 0 or confirming:
            wrapped = RequeueSearcher(strategy, replayed.owed)
            writer = store.writer(study.id, seed, **(writer_options or {}))
            recorder = StoreRecorder(writer, wrapped, lease, on_flush=mirror.after_flush)
            try:
                executor = make_executor(recorder)
                try:
                    if remaining > 0:
                        stats = run_search(wrapped, executor, recorder, remaining, space,
                                           budget, on_result=on_result)
                    if searcher.confirm:  # on what is stored, this session's trials included
                        recorder.flush(final=True)
                        plan = plan_confirmation(store.trials(study.id), searcher.confirm)
                        confirm_(plan, space, budget, executor, recorder, writer)
                finally:
                    try:
                        recorder.flush(final=True)
                    finally:
                        executor.shutdown()
            except KeyboardInterrupt:  # SIGINT or SIGTERM (cluster.signals)
                left = store.mark_running_failed(study.id, stop_reason())
                store.set_study_status(study.id, STOPPED)
                record_stop(study.name, store.masked_url, left)
                raise
            finally:
                writer.close()
        done = replayed.completed + stats.completed
        store.set_study_status(study.id, FINISHED if done >= study.evaluations else STOPPED)
    return SessionResult(store.study(study.id), stats, time.perf_counter() - start,
                         replayed.completed, len(replayed.owed), replayed.diverged, mirror.note)
