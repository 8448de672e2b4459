"""A session's strategy and Optuna mirror: which strategy continues a study, and keeping the
study's Optuna study (:mod:`mpsearch.storage.optuna_mirror`) in step with the store.

**Switching strategy** (``resume --searcher NAME``). The switch is recorded with the study
(:mod:`mpsearch.storage.strategies`) at the trial number it starts from. The new strategy is
told every stored trial first, as results it did not ask for: an Optuna sampler gets them as its
study's trials, evolution starts from the best of them, the integer program's profile measurer
takes the single-gene perturbations it finds among them (and the stored ``mpsearch profile``, as
for any run). It runs behind :class:`~mpsearch.searcher.known.KnownResultsSearcher`, so nothing
already stored is evaluated again. A later resume replays only the trials the current strategy
proposed, after telling it the earlier ones again.

**Mirroring.** The driver brings the mirror up to the store when a session starts (a deleted or
edited mirror is rebuilt there), in a thread of its own after commits (at most every ``every``
seconds), and when it ends (:class:`SessionMirror`); the commands that open one study for more
than a glance do the same (:func:`sync_mirror`, see ``cli/optuna.py``). A mirror that cannot be
written never stops a search: the store has the trials, and the next command rebuilds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from mpsearch.searcher.base import Evaluation, Searcher
from mpsearch.searcher.known import KnownResultsSearcher
from mpsearch.searcher.registry import SearcherConfig, searcher_class
from mpsearch.spaces.errors import SpecError
from mpsearch.storage.errors import StudyNotFoundError
from mpsearch.storage.models import COMPLETE, FAILED
from mpsearch.storage.optuna_mirror import (
    MirrorConflictError,
    MirrorError,
    OptunaMirror,
    is_driven,
)
from mpsearch.storage.store import StudyRecord, TrialRecord, TrialStore
from mpsearch.storage.strategies import StrategyRun, record_switch, strategy_history


def objectives_of(config: SearcherConfig) -> int:
    """How many objectives the configured strategy minimizes (2: objective and avg bits)."""
    cls = searcher_class(config.name)
    return cls.objectives(cls.Params(**config.params))


def as_config(run: StrategyRun, baselines: bool) -> SearcherConfig:
    return SearcherConfig(name=run.name, params=run.params, baselines=baselines)


def current_strategy(store: TrialStore, study: StudyRecord,
                     spec_searcher: SearcherConfig) -> tuple[SearcherConfig, int]:
    """The strategy that continues ``study`` and the trial number it took over at (0: the
    spec's strategy, which proposed every trial)."""
    last = strategy_history(store, study)[-1]
    if last.switched_at is None:
        return spec_searcher, 0
    return as_config(last, spec_searcher.baselines), last.from_trial


def switch_strategy(store: TrialStore, study: StudyRecord, spec_searcher: SearcherConfig,
                    switch_to: SearcherConfig | None) -> tuple[SearcherConfig, int]:
    """Record ``switch_to`` (if given, and checked: :meth:`SearcherConfig.check`) and return the
    session's strategy and its first trial. The caller holds the study's lease."""
    if switch_to is not None:
        record_switch(store, study, switch_to.name, dict(switch_to.params))
    return current_strategy(store, study, spec_searcher)


def told_first(searcher: Searcher, earlier: Sequence[TrialRecord]) -> Searcher:
    """``searcher`` told the final trials of earlier strategies, wrapped so that none of them is
    evaluated again (see the module doc)."""
    wrapped = KnownResultsSearcher(searcher)
    wrapped.tell([Evaluation(t.candidate, t.objective) for t in earlier
                  if t.status == COMPLETE or (t.status == FAILED and not t.interrupted)])
    return wrapped


def check_mirror(store: TrialStore, name: str) -> None:
    """Refuse, before study ``name`` is created or continued, an Optuna study of that name in the
    mirror's storage that is not its mirror (:class:`MirrorConflictError`); writes nothing."""
    try:
        record: StudyRecord | None = store.study(name)
    except StudyNotFoundError:
        record = None
    try:
        mirror = OptunaMirror(store)
    except SpecError:
        return  # an in-memory store has no mirror
    try:
        mirror.check(name, record)
    finally:
        mirror.close()


def sync_mirror(store: TrialStore, study: StudyRecord | str,
                on_error: Callable[[str], None] | None = None, unless_driven: bool = False) -> int:
    """Bring the Optuna mirror of ``study`` up to the store (what a command that opens a study
    does); returns the trials added. With ``on_error``, a mirror that cannot be written is
    reported there instead of raised (a read command still answers). ``unless_driven``: leave
    it to the driver that holds the study's lease now (one writer of the mirror at a time)."""
    record = store.study(study) if isinstance(study, str) else study
    if unless_driven and is_driven(store, record):
        return 0
    spec = SearcherConfig.model_validate(record.spec.get("searcher") or {})
    config, _ = current_strategy(store, record, spec)
    mirror = OptunaMirror(store)
    try:
        return mirror.sync(record, objectives_of(config))
    except MirrorError as exc:
        if on_error is None:
            raise
        on_error(f"the Optuna mirror was not updated: {exc}")
        return 0
    finally:
        mirror.close()


class SessionMirror:
    """The driver's mirror of one study, a context manager around the session: :meth:`check`
    first, synced at :meth:`start` (a deleted or edited mirror is rebuilt before the loop), then
    in a thread of its own after flushes (at most every ``every`` seconds: the loop never waits
    for Optuna's tables), and once more when the session ends without an error. A failure to
    write it is kept as :attr:`note`, not raised."""

    def __init__(self, store: TrialStore, study: StudyRecord, every: float = 2.0,
                 enabled: bool = True) -> None:
        self.study, self.every = study, every
        self.objectives = 1
        self.note: str | None = None
        self._at = -float("inf")
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.mirror: OptunaMirror | None = None
        if not enabled:  # a session that keeps no mirror (a benchmark of the loop alone)
            return
        try:
            self.mirror = OptunaMirror(store)
        except SpecError as exc:  # an in-memory store: no file to put the mirror beside
            self.note = f"no Optuna mirror: {exc}"

    def __enter__(self) -> SessionMirror:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
        if exc_type is None:
            self.sync()  # what the session committed last
        if self.mirror is not None:
            self.mirror.close()

    def check(self) -> None:
        """Refuse (:class:`~mpsearch.storage.optuna_mirror.MirrorConflictError`) an Optuna study
        of the name that is not this study's mirror; writes nothing."""
        if self.mirror is None:
            return
        try:
            self.mirror.check(self.study.name, self.study)
        except MirrorConflictError:
            raise
        except MirrorError as exc:
            self.note = f"the Optuna mirror was not updated ({exc}); the next command rebuilds it"

    def start(self, objectives: int) -> None:
        self.objectives = objectives
        self.sync()
        if self.note is None:
            self._thread = threading.Thread(target=self._follow, name="optuna-mirror", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            self.sync()

    def sync(self) -> None:
        if self.note is not None or self.mirror is None:
            return
        try:
            self.mirror.sync(self.study, self.objectives)
        except MirrorError as exc:
            self.note = f"the Optuna mirror was not updated ({exc}); the next command rebuilds it"
        self._at = time.monotonic()

    def after_flush(self) -> None:
        """Called by the recorder after each commit: wakes the mirror's thread when it is due."""
        if self._thread is not None and time.monotonic() - self._at >= self.every:
            self._wake.set()
