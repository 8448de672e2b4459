"""Every study as an Optuna study: the mirror that optuna-dashboard and ``optuna.load_study`` open.

**Where.** Optuna's RDB storage creates unprefixed tables (``studies``, ``trials``,
``trial_params``, ..., ``version_info``) and an ``alembic_version`` table stamped with its own
migration revision (``optuna/storages/_rdb/storage.py``, ``_init_alembic``); the store's tables are
``mps_*`` and it uses no Alembic. The mirror gets a schema of its own, so Optuna never meets another
application's ``alembic_version`` in the user's database and the mirror can be dropped whole (it is
rebuilt): beside a SQLite store ``foo.db`` the mirror is the file ``foo.optuna.db``;
in PostgreSQL it is the schema ``optuna`` of the same database (``options=-csearch_path=optuna``
on the URL, the schema created if missing). ``optuna-dashboard sqlite:///foo.optuna.db`` opens it.

**What.** The Optuna study has the mpsearch study's name and one trial per completed or failed
mpsearch trial:

* one categorical parameter per gene, named after the gene, valued by option label, whose
  choices are every option of the gene;
* the objective as its value; a multi-objective study (NSGA-II) has two minimized directions,
  the objective and the average effective bits, so the dashboard draws the Pareto front;
* user attributes ``mpsearch_trial`` (the trial's number in the store), ``origin``, ``avg_bits``,
  ``total_bytes``, the stored extras (``perplexity``, ...) and a failed trial's ``error``;
* the state, COMPLETE or FAIL; a trial screened on fewer calibration samples (multi-step
  selection) is PRUNED, its figure the intermediate value at step = its sample count, so
  Optuna's ``best_trial`` and the dashboard's history compare figures on every sample only;
* the budget as the system attribute ``constraints``, a list of one value: at most 0 within the
  budget, else the relative excess. optuna-dashboard 0.21 reads only that attribute
  (``_serializer.py``: ``trial_system_attrs.get("constraints", [])``), not the
  ``constraints:NAME`` keys Optuna 5's ``set_constraint`` writes; Optuna 5 reads the list too
  (as constraint ``"0"``), so it is the one form both show.

**Direction.** The store is the source of truth; nothing reads the mirror back into it.
:meth:`OptunaMirror.sync` adds the trials the mirror lacks, and rebuilds a mirror whose trials
are not the store's (deleted, edited, another objective count, an earlier study of that name).
An Optuna study of the same name that mpsearch did not write (it lacks the ``mpsearch`` study
system attribute) is refused with :class:`MirrorConflictError`, and left alone.

**Speed.** Optuna's ``add_trial`` costs about 70 ms for 36 parameters (a query per parameter to
check its distribution against earlier trials); the mirror writes a batch of trials through
Optuna's own table models in one transaction. Optuna is imported inside the functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.space import Budget, SearchSpace

from .errors import StoreError, mask_url, translating
from .models import COMPLETE, FAILED, RUNNING, LeaseRow, TrialRow
from .records import StudyRecord
from .store import TrialStore

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

OPTUNA_SCHEMA = "optuna"
MARK = "mpsearch"  # study system attribute of a mirror: which mpsearch study it mirrors
TRIAL_ATTR = "mpsearch_trial"  # user attribute of a mirrored trial: its number in the store
CONSTRAINTS = "constraints"  # the system attribute optuna-dashboard shows feasibility from
METRIC_NAMES = "study:metric_names"  # Optuna's study system attribute naming the objectives
_FINAL = (COMPLETE, FAILED)


class MirrorError(StoreError):
    """The Optuna mirror of a study cannot be written or read."""


class MirrorConflictError(MirrorError):
    """An Optuna study of the study's name exists and was not written by mpsearch."""


def optuna_storage_url(mpsearch_url: str, create_schema: bool = True) -> str:
    """The Optuna RDB URL beside the store at ``mpsearch_url`` (see the module doc)."""
    try:
        url = make_url(mpsearch_url)
    except ArgumentError:
        raise SpecError(f"storage.url: {mpsearch_url!r} is not a database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:") or db.startswith("file::memory:"):
            raise SpecError("storage.url: an in-memory SQLite store has no file to put the Optuna "
                            "study beside; use a SQLite file or PostgreSQL")
        stem = db[:-3] if db.endswith(".db") else db
        return url.set(database=f"{stem}.optuna.db").render_as_string(hide_password=False)
    if backend == "postgresql":
        derived = url.update_query_dict({"options": f"-csearch_path={OPTUNA_SCHEMA}"})
        if create_schema:
            _create_schema(url.render_as_string(hide_password=False))
        return derived.render_as_string(hide_password=False)
    raise SpecError(f"storage.url: Optuna studies are kept beside sqlite and postgresql stores, "
                    f"not {backend!r}")


def _create_schema(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with translating_optuna(url, "create the Optuna schema"), engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
    finally:
        engine.dispose()


@contextmanager
def translating_optuna(url: str, action: str) -> Iterator[None]:
    """Turn a database or Optuna error inside the block into a one-line :class:`MirrorError`."""
    import optuna

    try:
        yield
    except MirrorError:
        raise
    except (SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as exc:
        orig = getattr(exc, "orig", None) or exc
        reason = " ".join(str(orig).split())[:300] or type(orig).__name__
        raise MirrorError(f"Optuna storage {mask_url(url)}: cannot {action}: {reason}") from None


def budget_constraint(budget: Budget, avg_bits: float, total_bytes: float, feasible: bool) -> float:
    """Optuna's constraint value of a trial: the relative excess over the tightest bound, at most
    0 exactly when the stored feasibility flag says the trial is within budget."""
    excess = []
    if budget.avg_bits is not None:
        excess.append(avg_bits / budget.avg_bits - 1)
    if budget.total_bytes is not None:
        excess.append(total_bytes / budget.total_bytes - 1)
    v = max(excess, default=0.0)
    return min(v, 0.0) if feasible else max(v, 1e-12)  # the flag allows a float's slack


def distributions(space: SearchSpace) -> dict[str, Any]:
    """One categorical distribution per gene, over the labels of all its options."""
    from optuna.distributions import CategoricalDistribution

    return {g.name: CategoricalDistribution([o.label for o in g.options]) for g in space.genes}


def is_driven(store: TrialStore, study: StudyRecord) -> bool:
    """Whether a driver holds the study's lease now (it then keeps the mirror in step itself)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with translating(store.url, f"read the lease of study {study.name!r}"), \
            store.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(LeaseRow).where(
            LeaseRow.study_id == study.id, LeaseRow.expires_at >= now)) == 1


def _insert_many(conn: Any, table: Any, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """``INSERT`` of many rows (tuples in ``columns``' order) through the DBAPI's own executemany
    (PostgreSQL: ``COPY``): SQLAlchemy's per-row parameter processing costs more than the
    database here."""
    if conn.dialect.name == "postgresql":  # COPY: a fraction of the server's work per row
        sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            with conn.connection.dbapi_connection.cursor() as cursor, cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi_error as exc:  # the DBAPI's own cursor: wrapped as SQLAlchemy wraps errors
            raise DBAPIError.instance(sql, None, exc, dbapi_error) from exc
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join([mark] * len(columns))})")
    conn.exec_driver_sql(sql, rows)


@dataclass
class _Progress:
    """What one :class:`OptunaMirror` knows it has mirrored of one study."""

    optuna_id: int
    objectives: int
    count: int  # trials in the Optuna study
    mirrored: set[int] = field(default_factory=set)  # store numbers mirrored at or above ``low``
    low: int = 0  # every final trial numbered below is mirrored


class OptunaMirror:
    """Writes the Optuna studies of one store's studies (see the module doc).

    One instance per process is enough; it remembers how far each study is mirrored, so a
    driver's repeated :meth:`sync` reads only the trials finished since.
    """

    def __init__(self, store: TrialStore) -> None:
        self.store = store
        self.url = optuna_storage_url(store.url)
        self._rdb: RDBStorage | None = None
        self._progress: dict[str, _Progress] = {}

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def storage(self) -> RDBStorage:
        import optuna

        if self._rdb is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            with translating_optuna(self.url, "open the Optuna storage"):
                self._rdb = optuna.storages.RDBStorage(self.url)
        return self._rdb

    def close(self) -> None:
        if self._rdb is not None:
            self._rdb.engine.dispose()
            self._rdb = None
        self._progress.clear()

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """A session on Optuna's tables; what it added is committed unless the block raises."""
        scoped = self.storage().scoped_session
        session = scoped()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            scoped.remove()

    # -- the study ---------------------------------------------------------------------------
    def _find(self, name: str) -> int | None:
        try:
            return self.storage().get_study_id_from_name(name)
        except KeyError:
            return None

    def check(self, name: str, study: StudyRecord | None = None) -> None:
        """Raise :class:`MirrorConflictError` if an Optuna study ``name`` exists that cannot
        become the mirror of ``study`` (None: a study about to be created). Writes nothing."""
        with translating_optuna(self.url, f"read Optuna study {name!r}"):
            optuna_id = self._find(name)
            if optuna_id is not None and not self._ours(optuna_id, study):
                raise MirrorConflictError(
                    f"Optuna study {name!r} in {self.masked_url} was not written by mpsearch; "
                    "use another study name, or delete that Optuna study")

    def _ours(self, optuna_id: int, study: StudyRecord | None) -> bool:
        """Whether the Optuna study may be (re)written as ``study``'s mirror: it carries the
        mpsearch mark, or it is the study the optuna strategy kept before mirrors existed
        (every trial over the study's genes, every completed one a stored configuration)."""
        rdb = self.storage()
        if MARK in rdb.get_study_system_attrs(optuna_id):
            return True
        if study is None:
            return False
        trials = rdb.get_all_trials(optuna_id, deepcopy=False)
        labels = {g.name: {o.label for o in g.options} for g in study.space.genes}
        stored = {tuple(t.choices) for t in self.store.trials(study.name, COMPLETE)}
        index = {g.name: {o.label: i for i, o in enumerate(g.options)} for g in study.space.genes}
        for t in trials:
            if set(t.params) - set(labels):
                return False
            if any(v not in labels[k] for k, v in t.params.items()):
                return False
            if t.state.name == "COMPLETE":
                if set(t.params) != set(labels):
                    return False
                if tuple(index[g.name][t.params[g.name]] for g in study.space.genes) not in stored:
                    return False
        return bool(trials)

    def _mark(self, study: StudyRecord) -> dict[str, Any]:
        return {"study": study.name, "created_at": study.created_at.isoformat()}

    def _create(self, study: StudyRecord, objectives: int) -> int:
        from optuna.study import StudyDirection

        rdb = self.storage()
        optuna_id = rdb.create_new_study([StudyDirection.MINIMIZE] * objectives, study.name)
        rdb.set_study_system_attr(optuna_id, MARK, self._mark(study))
        for key, value in (("model", study.model), ("objective", study.objective),
                           ("budget", study.budget.describe()),
                           ("store", self.store.masked_url)):
            rdb.set_study_user_attr(optuna_id, key, value)
        names = [study.objective] if objectives == 1 else [study.objective, "avg_bits"]
        # what Study.set_metric_names writes (it warns as experimental, from any thread)
        rdb.set_study_system_attr(optuna_id, METRIC_NAMES, names)
        return optuna_id

    def _open(self, study: StudyRecord, objectives: int) -> _Progress:
        """The mirror of ``study`` as it is stored, rebuilt empty if it is not the store's."""
        from optuna.storages._rdb import models as om  # Optuna's own tables (see the module doc)

        rdb = self.storage()
        optuna_id = self._find(study.name)
        if optuna_id is not None:
            if not self._ours(optuna_id, study):
                self.check(study.name, study)  # raises the conflict
            mark = rdb.get_study_system_attrs(optuna_id).get(MARK)
            fresh = (mark == self._mark(study)
                     and len(rdb.get_study_directions(optuna_id)) == objectives)
            if fresh:
                with self._session() as session:
                    count = session.scalar(select(func.count()).select_from(om.TrialModel)
                                           .where(om.TrialModel.study_id == optuna_id))
                    numbers = [json.loads(v) for v in session.scalars(
                        select(om.TrialUserAttributeModel.value_json)
                        .join(om.TrialModel)
                        .where(om.TrialModel.study_id == optuna_id,
                               om.TrialUserAttributeModel.key == TRIAL_ATTR))]
                final = set(self._final_numbers(study))
                if count == len(numbers) == len(set(numbers)) and set(numbers) <= final:
                    return _Progress(optuna_id, objectives, count or 0, set(numbers))
            rdb.delete_study(optuna_id)  # ours, but not the store's trials: rebuild it
        return _Progress(self._create(study, objectives), objectives, 0)

    def _final_numbers(self, study: StudyRecord) -> list[int]:
        with self.store.engine.connect() as conn:
            return list(conn.scalars(select(TrialRow.number).where(
                TrialRow.study_id == study.id, TrialRow.status.in_(_FINAL))))

    # -- trials ------------------------------------------------------------------------------
    def sync(self, study: StudyRecord, objectives: int = 1) -> int:
        """Bring the Optuna study of ``study`` up to the store; returns how many trials it
        added. ``objectives`` is 2 for a multi-objective strategy (objective, avg bits).

        Raises:
            MirrorConflictError: an Optuna study of that name was not written by mpsearch.
            MirrorError: the Optuna storage cannot be used.
        """
        with translating_optuna(self.url, f"mirror study {study.name!r}"):
            progress = self._progress.get(study.name)
            if progress is None or progress.objectives != objectives:
                progress = self._open(study, objectives)
                self._progress[study.name] = progress
            return self._add_new(study, progress)

    def _add_new(self, study: StudyRecord, progress: _Progress) -> int:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(TrialRow).where(
                TrialRow.study_id == study.id, TrialRow.number >= progress.low)
                .order_by(TrialRow.number)).all()
        new = [r for r in rows if r.status in _FINAL and r.number not in progress.mirrored]
        if new:
            self._insert(study, progress, new)
        running = [r.number for r in rows if r.status == RUNNING]
        top = max((r.number for r in rows), default=progress.low - 1) + 1
        progress.low = min(running, default=top)
        progress.mirrored = {n for n in progress.mirrored if n >= progress.low}
        return len(new)

    def _insert(self, study: StudyRecord, progress: _Progress, rows: list[Any]) -> None:
        """Write ``rows`` (store trials) as Optuna trials: one bulk insert per Optuna table (the
        trials first, then their ids read back by number), with each row a tuple built from
        pieces made once per sync (a gene's parameter rows, the JSON of a constant)."""
        from optuna.distributions import distribution_to_json
        from optuna.storages._rdb import models as om

        dists = distributions(study.space)
        # every (gene, choice)'s parameter row but its trial id, built once
        param_rows = [[(g.name, dists[g.name].to_internal_repr(o.label),
                        distribution_to_json(dists[g.name])) for o in g.options]
                      for g in study.space.genes]
        budget, two = study.budget, progress.objectives == 2
        complete = [r.status == COMPLETE and r.objective is not None
                    and not math.isnan(r.objective) for r in rows]
        states = ["FAIL" if not ok else "PRUNED" if r.samples is not None else "COMPLETE"
                  for r, ok in zip(rows, complete, strict=True)]
        trials = om.TrialModel.__table__
        first = progress.count
        with self._session() as session:
            conn = session.connection()
            # Enums by name, as SQLAlchemy's non-native Enum type stores them
            _insert_many(conn, trials, ("number", "study_id", "state", "datetime_start",
                                        "datetime_complete"),
                         [(first + i, progress.optuna_id, state, r.started_at, r.finished_at)
                          for i, (r, state) in enumerate(zip(rows, states, strict=True))])
            made = conn.execute(select(trials.c.trial_id).where(
                trials.c.study_id == progress.optuna_id, trials.c.number >= first)
                .order_by(trials.c.number)).scalars().all()
            params: list[tuple[Any, ...]] = []
            values: list[tuple[Any, ...]] = []
            user: list[tuple[Any, ...]] = []
            system: list[tuple[Any, ...]] = []
            steps: list[tuple[Any, ...]] = []
            for tid, r, state in zip(made, rows, states, strict=True):
                params += [(tid, *gene[c]) for gene, c in zip(param_rows, r.choices, strict=True)]
                if state == "COMPLETE":
                    for k, v in enumerate((r.objective, r.avg_bits) if two else (r.objective,)):
                        stored, kind = om.TrialValueModel.value_to_stored_repr(v)
                        values.append((tid, k, stored, kind.name))
                elif state == "PRUNED":
                    value, vkind = om.TrialIntermediateValueModel \
                        .intermediate_value_to_stored_repr(r.objective)
                    steps.append((tid, r.samples, value, vkind.name))
                attrs: dict[str, Any] = {TRIAL_ATTR: r.number, "origin": r.origin,
                                         "avg_bits": r.avg_bits, "total_bytes": r.total_bytes}
                if r.objective is not None and math.isnan(r.objective):
                    attrs["objective"] = "nan"
                attrs.update(r.extra or {})
                if r.error:
                    attrs["error"] = r.error
                user += [(tid, k, json.dumps(v)) for k, v in attrs.items()]
                excess = budget_constraint(budget, r.avg_bits, r.total_bytes, r.feasible)
                system.append((tid, CONSTRAINTS, json.dumps([excess])))
            for model, columns, batch in (
                    (om.TrialParamModel, ("trial_id", "param_name", "param_value",
                                          "distribution_json"), params),
                    (om.TrialValueModel, ("trial_id", "objective", "value", "value_type"), values),
                    (om.TrialIntermediateValueModel, ("trial_id", "step", "intermediate_value",
                                                      "intermediate_value_type"), steps),
                    (om.TrialUserAttributeModel, ("trial_id", "key", "value_json"), user),
                    (om.TrialSystemAttributeModel, ("trial_id", "key", "value_json"), system)):
                if batch:
                    _insert_many(conn, model.__table__, columns, batch)
        progress.count += len(rows)
        progress.mirrored.update(r.number for r in rows)
