"""Evaluating candidates on a pool of Ray worker actors, with ``ray.wait``.

Placement: ``count`` actors, each with ``cpus`` CPUs and ``gpus`` GPUs (a fraction such as 0.25
puts four small-model workers on one GPU), scheduled with Ray's ``SPREAD`` strategy so that they
land on as many nodes as the cluster has. Each actor holds ``depth`` candidates at a time
(default 2: the next candidate waits on the worker while one is evaluated, which hides the
driver's round trip).

Batches: when evaluations are much cheaper than an actor call (a no-op objective, a tiny model on
a CPU), one call carries several candidates (``WorkerActor.evaluate_many``) and the driver pays
Ray's round trip once for them. The executor measures both sides from the calls it has made:
the worker's seconds per candidate ``e`` (the actor times its own call) and the call's overhead
``c`` (its round trip less the seconds the worker spent on it and on the calls queued ahead of
it), each the median of the last calls; a call then carries ``k = c / e`` candidates, at most
``max_batch``. So a batch's first result waits at most about one round trip longer than it
would alone, and an evaluation that takes longer than half a round trip (anything on a GPU:
~100 ms against ~1 ms) always goes one per call. Results are reported per candidate as before.

Fault tolerance: a worker that dies (process killed, node lost, CUDA error that kills the
process) is told apart from a candidate that failed (an exception inside an evaluation, which the
actor returns as a failed outcome). The dead actor is replaced and every candidate it held is
dispatched again, on the replacement, up to ``max_attempts`` times; a candidate that keeps killing
workers is then reported failed with the reason. Replacements are bounded too
(``max_replacements``), so a cluster that cannot keep a worker alive ends the search with an error
instead of looping. Each submitted key is reported exactly once, so a trial is never lost and
never stored twice. Each death is reported in mpsearch's own words, one line each on the
``mpsearch.cluster`` logger (the CLI prints them): which worker, why (Ray's reason in short), and
which trial was dispatched again (or failed for good), then when the replacement is up.
A worker that dies during a batch leaves unknown which of its candidates it was evaluating:
none of them is charged an attempt, and each is sent again in a call of its own, where a
candidate that kills workers is then caught and charged.

Durability: ``before_dispatch`` (the recorder's flush) runs before anything is sent to a worker
and before blocking on results; while blocked, the executor wakes after ``flush_due()`` seconds
(the writer's group-commit window) to run it again, so a result is committed within the window
however long the next evaluation takes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from mpsearch.searcher.loop import Outcome
from mpsearch.spaces.space import Candidate, SearchSpace
from mpsearch.workers.errors import WorkerError

log = logging.getLogger("mpsearch.cluster")


@dataclass
class _Item:
    """A submitted candidate: its key, the attempts charged to it, and whether it must go alone
    (it was in a batch whose worker died, so it may be the candidate that kills workers)."""

    key: int
    candidate: Candidate
    attempts: int = 0
    alone: bool = False


@dataclass
class _Flight:
    items: list[_Item]  # one call's candidates, evaluated in this order
    slot: int  # actor index
    actor: Any  # the handle it was sent to (a replaced actor's late error is not a new death)
    sent: int  # dispatch order: an actor runs its tasks in the order they were sent
    at: float  # time.monotonic() when sent
    ahead: list[_Flight] = field(default_factory=list)  # calls queued before it on its actor
    worked: float = 0.0  # the worker's seconds on this call, once it returned


def placed(actor_cls: Any, cpus: float, gpus: float) -> Any:
    """``actor_cls`` with a worker's resources, spread: one worker per node first, then round
    again (fractional GPUs share a GPU)."""
    return actor_cls.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD")


def first_line(exc: BaseException) -> str:
    """The useful line of a (possibly Ray-wrapped) exception, at most 300 characters."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def death_reason(exc: BaseException) -> str:
    """Why Ray says an actor died, in one short clause: the cause and the worker's exit detail,
    with its pid and node (``its worker process has died: pid 22434 on 10.0.0.5, Worker
    unexpectedly exits with a connection error code 2``)."""
    text = " ".join(str(getattr(exc, "error_msg", None) or exc).split())
    cause = re.search(r"The actor is dead because ([^.]+)", text)
    detail = re.search(r"Worker exit detail: ([^.]+)", text)
    pid, ip = re.search(r"\bpid: (\d+)", text), re.search(r"\bip: ([\w.:-]+)", text)
    where = f"pid {pid[1]} on {ip[1]}" if pid and ip else ""
    parts = [p for p in (where, detail[1] if detail else "") if p]
    head = cause[1] if cause else first_line(exc)
    return f"{head}: {', '.join(parts)}" if parts else head


class RayExecutor:
    """The loop's executor over Ray actors (see the module docstring for the guarantees)."""

    item = "trial"  # what a submitted key numbers, in the messages about dead workers
    max_batch = 8  # candidates per call at most (a subclass whose items are chunks: 1)
    window = 16  # calls whose timings decide the batch size

    def __init__(self, setup: Any, space: SearchSpace, count: int, cpus: float = 1.0,
                 gpus: float = 0.0, max_attempts: int = 3, *, depth: int = 2,
                 actor_cls: Any = None, before_dispatch: Callable[[], None] | None = None,
                 max_replacements: int | None = None, start_timeout: float = 600.0,
                 flush_due: Callable[[], float | None] | None = None,
                 started: list[Any] | None = None) -> None:
        """``started``: actors of ``actor_cls`` already started without a setup (see
        :mod:`.prestart`), taken as the first workers and given ``setup`` and ``space``."""
        if actor_cls is None:
            from mpsearch.workers.actor import WorkerActor
            actor_cls = WorkerActor
        self.setup, self.space, self.actor_cls = setup, space, actor_cls
        self.cpus, self.gpus, self.depth = cpus, gpus, depth
        self.max_attempts = max_attempts
        self.max_replacements = 4 * count + 8 if max_replacements is None else max_replacements
        self.before_dispatch, self.flush_due = before_dispatch, flush_due
        self.start_timeout = start_timeout
        self.replaced = 0
        self.redispatched = 0
        started = list(started or [])[:count]
        for actor in started:  # an actor runs one caller's calls in order: this one first
            actor.configure.remote(setup, space)
        self.actors = started + [self._spawn(i) for i in range(len(started), count)]
        self.labels = self._ready(self.actors)
        self.idle = [i for _ in range(depth) for i in range(count)]
        self.queued: deque[_Item] = deque()
        self.running: dict[ray.ObjectRef, _Flight] = {}
        self.starting: dict[ray.ObjectRef, int] = {}  # replacements not up yet → their slot
        self.sent = 0
        self.in_progress: dict[int, int] = {}  # id of a dead actor → the ``sent`` it was running
        # batches need an actor that evaluates several candidates per call, and evaluations
        # much cheaper than a call (measured: the worker's seconds per candidate, the overhead)
        self.batching = self.max_batch > 1 and hasattr(
            getattr(actor_cls, "__ray_actor_class__", actor_cls), "evaluate_many")
        self.batch = 1
        self.per_candidate: deque[float] = deque(maxlen=self.window)
        self.per_call: deque[float] = deque(maxlen=self.window)

    # -- actors ------------------------------------------------------------------------------
    def _spawn(self, index: int) -> Any:
        return placed(self.actor_cls, self.cpus, self.gpus).remote(self.setup, self.space,
                                                                   f"w{index}")

    @staticmethod
    def _ready(actors: list[Any]) -> list[str]:
        """Wait until every actor has loaded its model; a load failure is the user's error."""
        try:
            return ray.get([a.name.remote() for a in actors])
        except RayError as exc:
            raise WorkerError(f"worker failed to start: {first_line(exc)}") from None

    def _replace(self, index: int, exc: BaseException) -> None:
        """Start a new actor in place of a dead one; its slot is used once it is up."""
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise WorkerError(f"workers died {self.replaced} times (last: {first_line(exc)}); "
                              "check the cluster's nodes and the workers' logs")
        log.warning(f"worker {self.labels[index]} died ({death_reason(exc)}); starting "
                    f"replacement {self.replaced} of at most {self.max_replacements}")
        with contextlib.suppress(RayError, ValueError):  # already gone
            ray.kill(self.actors[index], no_restart=True)
        self.idle = [i for i in self.idle if i != index]
        self.actors[index] = self._spawn(index)
        self.starting[self.actors[index].name.remote()] = index

    # -- what a task is (a subclass sends other work to the same actors, e.g. profiling) --------
    def _call(self, actor: Any, candidate: Any) -> ray.ObjectRef:
        """Start the work of one submitted item on ``actor``."""
        return actor.evaluate.remote(candidate)

    def _outcome(self, label: str, result: Any) -> Any:
        """What :meth:`collect` reports for a finished item (the actor returned ``label, result``)."""
        return Outcome(result.objective, result.seconds, label, result.error, dict(result.extra))

    def _failed(self, candidate: Any, reason: str) -> Any:
        """What :meth:`collect` reports for an item that kept killing workers."""
        return Outcome(None, 0.0, "", reason)

    # -- the Executor protocol ---------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Candidates the loop may have in flight: ``depth`` calls per worker, of ``batch`` each."""
        return len(self.actors) * self.depth * self.batch

    def submit(self, key: int, candidate: Candidate, attempts: int = 0) -> None:
        """Queue a candidate; it is sent at the next :meth:`collect`, after ``before_dispatch``."""
        self.queued.append(_Item(key, candidate, attempts))

    def _dispatch(self) -> None:
        """Send queued candidates to free workers (the recorder has flushed first): up to
        ``batch`` per call, in the order submitted; one that must go alone goes alone."""
        if self.before_dispatch is not None:
            self.before_dispatch()
        while self.queued and self.idle:
            items = [self.queued.popleft()]
            while (self.queued and len(items) < self.batch and not items[0].alone
                   and not self.queued[0].alone):
                items.append(self.queued.popleft())
            index = self.idle.pop()
            actor = self.actors[index]
            ahead = [f for f in self.running.values() if f.actor is actor]
            ref = (actor.evaluate_many.remote([item.candidate for item in items])
                   if self.batching else self._call(actor, items[0].candidate))
            self.running[ref] = _Flight(items, index, actor, self.sent, time.monotonic(), ahead)
            self.sent += 1

    def collect(self) -> list[tuple[int, Outcome]]:
        """Block until at least one candidate has an outcome; return every one that has.

        Candidates wait in the queue while every worker is busy or being replaced; a replacement
        that cannot be placed (the cluster lost the resources) leaves the others serving.
        """
        done: list[tuple[int, Outcome]] = []
        self._dispatch()
        while not done and (self.running or self.starting):
            refs = [*self.running, *self.starting]
            ready = self._wait_one(refs)  # then sweep up whatever else is ready too
            if len(refs) > len(ready):
                rest = [r for r in refs if r not in ready]
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in [r for r in ready if r in self.starting]:
                self._started(ref)
            finished = sorted((r for r in ready if r in self.running),
                              key=lambda r: self.running[r].sent)  # calls ahead come first
            now = time.monotonic()
            for ref, value in zip(finished, self._get(finished), strict=True):
                flight = self.running.pop(ref)
                if isinstance(value, RayActorError):
                    self._worker_died(flight, value, done)
                    continue
                self.idle.append(flight.slot)
                if self.batching:
                    label, results, flight.worked = value
                    self._timed(flight, now)
                    done += [(item.key, self._outcome(label, result))
                             for item, result in zip(flight.items, results, strict=True)]
                else:
                    done.append((flight.items[0].key, self._outcome(*value)))
            if not done:
                self._dispatch()  # re-dispatched candidates, freshly started workers
        return done

    def _timed(self, flight: _Flight, now: float) -> None:
        """Learn from a returned call, and size the next calls' batches (module docstring)."""
        self.per_candidate.append(flight.worked / len(flight.items))
        waited = sum(f.worked for f in flight.ahead)  # at most what it waited behind them
        flight.ahead = []  # (kept, each call would hold every call before it)
        self.per_call.append(max(now - flight.at - flight.worked - waited, 0.0))
        if len(self.per_call) >= 3:
            e, c = statistics.median(self.per_candidate), statistics.median(self.per_call)
            self.batch = max(1, min(self.max_batch, int(c / e) if e > 0 else self.max_batch))

    def _wait_one(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Block until a ref is ready; meanwhile call ``before_dispatch`` again whenever
        ``flush_due`` says buffered trials must be committed (so they wait at most that long)."""
        deadline = None if self.running else time.monotonic() + self.start_timeout
        while True:
            due = self.flush_due() if self.flush_due is not None else None
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            timeout = due if left is None else left if due is None else min(due, left)
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if ready:
                return ready
            if deadline is not None and time.monotonic() >= deadline:
                raise WorkerError(
                    f"no worker could be started for {self.start_timeout:.0f} s (each needs "
                    f"{self.cpus:g} CPU and {self.gpus:g} GPU); the cluster lacks resources")
            if self.before_dispatch is not None:
                self.before_dispatch()

    @staticmethod
    def _get(refs: list[ray.ObjectRef]) -> list[Any]:
        """Values of ready refs in one call; a dead worker's ref yields its RayActorError."""
        try:
            return ray.get(refs)
        except RayActorError:
            values: list[Any] = []
            for ref in refs:
                try:
                    values.append(ray.get(ref))
                except RayActorError as exc:
                    values.append(exc)
            return values

    def _started(self, ref: ray.ObjectRef) -> None:
        index = self.starting.pop(ref)
        try:
            self.labels[index] = ray.get(ref)
        except RayError as exc:  # the replacement died too (node lost again, load failure)
            self._replace(index, exc)
            return
        log.warning(f"replacement worker {self.labels[index]} is up")
        self.idle.extend([index] * self.depth)

    def _worker_died(self, flight: _Flight, exc: BaseException,
                     done: list[tuple[int, Outcome]]) -> None:
        if self.actors[flight.slot] is flight.actor:  # first news of this death
            # the call it was evaluating is the first sent of those it held; the others
            # waited behind it and are sent again without an attempt counted against them
            self.in_progress[id(flight.actor)] = min(
                [flight.sent] + [f.sent for f in self.running.values() if f.actor is flight.actor])
            self._replace(flight.slot, exc)
        running = flight.sent == self.in_progress.get(id(flight.actor))
        label = self.labels[flight.slot]
        if running and len(flight.items) > 1:  # which of them it was evaluating is unknown
            for item in flight.items:
                log.warning(f"{self.item} {item.key} dispatched again, alone (it was in a batch "
                            f"of {len(flight.items)} on worker {label}; attempt "
                            f"{item.attempts + 1} of {self.max_attempts})")
                self.redispatched += 1
                self.queued.append(_Item(item.key, item.candidate, item.attempts, alone=True))
            return
        for item in flight.items:
            attempts = item.attempts + running
            if attempts >= self.max_attempts:
                log.warning(f"{self.item} {item.key} failed: its worker died {attempts} times "
                            "while evaluating it (a candidate that kills workers is not tried "
                            "again)")
                done.append((item.key, self._failed(
                    item.candidate, f"worker died {attempts} times evaluating this candidate: "
                    f"{first_line(exc)}")))
            elif not running:
                log.warning(f"{self.item} {item.key} dispatched again (it was waiting on worker "
                            f"{label}, behind the one it was evaluating)")
                self.redispatched += 1
                self.queued.append(_Item(item.key, item.candidate, attempts, item.alone))
            else:
                log.warning(f"{self.item} {item.key} dispatched again (it was on worker {label}; "
                            f"attempt {attempts + 1} of {self.max_attempts})")
                self.redispatched += 1
                self.queued.append(_Item(item.key, item.candidate, attempts, item.alone))

    def shutdown(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(RayError, ValueError):
                ray.kill(actor, no_restart=True)
        self.actors, self.idle, self.running, self.starting = [], [], {}, {}
        self.queued.clear()
