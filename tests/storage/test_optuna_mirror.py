"""The Optuna mirror of a study, on SQLite and PostgreSQL: what Optuna reads back, and that the
store stays the source of truth (a deleted or edited mirror is rebuilt, a foreign study refused)."""

from __future__ import annotations

import uuid

import optuna
import pytest

from mpsearch.spaces.errors import SpecError
from mpsearch.storage.optuna_mirror import (
    MirrorConflictError,
    OptunaMirror,
    optuna_storage_url,
)

from .conftest import BUDGET_BITS, SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def unique(prefix: str) -> str:
    """PostgreSQL keeps the ``optuna`` schema between tests: every test names its own studies."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def load(store, name):
    return optuna.load_study(study_name=name, storage=optuna_storage_url(store.url))


def test_one_optuna_trial_per_completed_or_failed_trial(builder):
    name = unique("mirror")
    study = builder.study(name)
    builder.add(study, [1, 2], 0.5)  # int4 + int8: 6.25 bits, on the budget
    builder.add(study, [2, 2], 0.1)  # int8 + int8: over the budget
    builder.add(study, [0, 0], None)  # failed
    running = builder.add(study, [1, 1], "running")
    mirror = OptunaMirror(builder.store)
    assert mirror.sync(study) == 3
    assert mirror.sync(study) == 0

    trials = load(builder.store, name).trials
    assert [t.user_attrs["mpsearch_trial"] for t in trials] == [0, 1, 2]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert trials[0].params == {"blk.0.fc": "int4-g128-asym", "blk.1.fc": "int8-g128-asym"}
    assert trials[0].distributions["blk.0.fc"].choices == tuple(o.label for o in SPACE.genes[0].options)
    assert [t.values for t in trials] == [[0.5], [0.1], None]
    assert trials[0].user_attrs["avg_bits"] == pytest.approx(6.25)
    assert trials[2].user_attrs["error"] == "boom"
    # feasibility where optuna-dashboard reads it, and Optuna too
    assert trials[0].system_attrs["constraints"] == [0.0]
    assert trials[1].system_attrs["constraints"] == [pytest.approx(8.25 / BUDGET_BITS - 1)]
    assert load(builder.store, name).best_trial.user_attrs["mpsearch_trial"] == 0

    builder.store.finish_trial(study.id, running, 0.3, "w0", None, 0.1)
    assert mirror.sync(study) == 1
    assert OptunaMirror(builder.store).sync(study) == 0  # a new process sees it is up to date
    assert len(load(builder.store, name).trials) == 4


def test_deleted_or_edited_mirror_is_rebuilt(builder):
    name = unique("rebuilt")
    study = builder.study(name)
    for choices, value in (([1, 1], 0.4), ([0, 1], 0.9), ([1, 2], 0.2)):
        builder.add(study, choices, value)
    OptunaMirror(builder.store).sync(study)
    url = optuna_storage_url(builder.store.url)
    optuna.delete_study(study_name=name, storage=url)
    assert OptunaMirror(builder.store).sync(study) == 3
    # a trial added by hand is not the store's: the next sync rebuilds the mirror without it
    edited = load(builder.store, name)
    edited.add_trial(optuna.trial.create_trial(
        params={"blk.0.fc": "fp16"}, distributions={
            "blk.0.fc": edited.trials[0].distributions["blk.0.fc"]}, values=[0.0]))
    assert OptunaMirror(builder.store).sync(study) == 3
    trials = load(builder.store, name).trials
    assert sorted(t.user_attrs["mpsearch_trial"] for t in trials) == [0, 1, 2]
    assert min(t.value for t in trials) == 0.2


def test_multi_objective_mirror_has_two_directions(builder):
    name = unique("nsga")
    study = builder.study(name)
    builder.add(study, [1, 1], 0.4)
    builder.add(study, [0, 1], 0.9)
    mirror = OptunaMirror(builder.store)
    mirror.sync(study, objectives=2)
    optuna_study = load(builder.store, name)
    assert len(optuna_study.directions) == 2
    assert optuna_study.metric_names == ["kl", "avg_bits"]
    assert [t.values for t in optuna_study.trials] == [[0.4, pytest.approx(4.25)],
                                                       [0.9, pytest.approx(3.25)]]
    assert len(optuna_study.best_trials) == 2  # both on the Pareto front


def test_a_foreign_optuna_study_of_that_name_is_refused_and_left_alone(builder):
    name = unique("clash")
    url = optuna_storage_url(builder.store.url)
    theirs = optuna.create_study(study_name=name, storage=url)
    theirs.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study = builder.study(name)
    builder.add(study, [1, 1], 0.4)
    mirror = OptunaMirror(builder.store)
    with pytest.raises(MirrorConflictError, match=f"Optuna study '{name}' .* not written by mpsearch"):
        mirror.sync(study)
    with pytest.raises(MirrorConflictError):
        mirror.check(name)
    after = optuna.load_study(study_name=name, storage=url)
    assert [t.params.keys() for t in after.trials] == [{"x"}, {"x"}]


def test_storage_urls():
    assert optuna_storage_url("sqlite:///runs/a.db") == "sqlite:///runs/a.optuna.db"
    assert optuna_storage_url("sqlite:////abs/b") == "sqlite:////abs/b.optuna.db"
    pg = optuna_storage_url("postgresql+psycopg://u:pw@h:5432/db", create_schema=False)
    assert pg.startswith("postgresql+psycopg://u:pw@h:5432/db?options=") and "search_path" in pg
    with pytest.raises(SpecError, match="in-memory"):
        optuna_storage_url("sqlite://")


@pytest.mark.postgres
def test_postgres_schema_is_created(pg_url):
    url = optuna_storage_url(pg_url)
    study = optuna.create_study(storage=url, study_name="pg-schema")
    assert study.study_name == "pg-schema"
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'optuna'")).scalars().all()
    engine.dispose()
    assert "alembic_version" in tables and "studies" in tables


def test_the_study_the_optuna_strategy_kept_before_mirrors_is_rebuilt_as_the_mirror(builder):
    """Before mirrors, the optuna strategy kept its own study of the study's name (windowed
    choices, pruned draws): it is the same study, so it is rebuilt from the store, not refused."""
    from optuna.distributions import CategoricalDistribution

    name = unique("legacy")
    study = builder.study(name)
    builder.add(study, [1, 2], 0.5)
    builder.add(study, [1, 1], 0.7)
    old = optuna.create_study(study_name=name, storage=optuna_storage_url(builder.store.url))
    window = {g.name: CategoricalDistribution(["int4-g128-asym", "int8-g128-asym"])
              for g in SPACE.genes}
    old.add_trial(optuna.trial.create_trial(
        params={"blk.0.fc": "int4-g128-asym", "blk.1.fc": "int8-g128-asym"},
        distributions=window, values=[0.5]))
    old.add_trial(optuna.trial.create_trial(
        params={"blk.0.fc": "int8-g128-asym", "blk.1.fc": "int8-g128-asym"},
        distributions=window, state=optuna.trial.TrialState.PRUNED))
    assert OptunaMirror(builder.store).sync(study) == 2
    trials = load(builder.store, name).trials
    assert sorted(t.user_attrs["mpsearch_trial"] for t in trials) == [0, 1]
    assert len(trials[0].distributions["blk.0.fc"].choices) == len(SPACE.genes[0].options)


@pytest.mark.postgres
def test_rows_copied_into_postgres_come_back_and_a_failed_copy_is_a_sqlalchemy_error(pg_url):
    """The mirror's bulk rows go into PostgreSQL with COPY through the DBAPI's own cursor: the
    values read back as written, and an error there is wrapped as SQLAlchemy wraps its own (the
    mirror's error translation and the retry logic read SQLAlchemy's errors)."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
    from sqlalchemy.exc import DBAPIError

    from mpsearch.storage.optuna_mirror import _insert_many

    table = Table(f"copied_{uuid.uuid4().hex[:8]}", MetaData(), Column("trial_id", Integer),
                  Column("key", String(64)), Column("value_json", String(64)))
    engine = create_engine(pg_url)
    try:
        table.create(engine)
        columns = ("trial_id", "key", "value_json")
        rows = [(i, f"k{i}", None if i == 2 else f"[{i}]") for i in range(4)]
        with engine.begin() as conn:
            _insert_many(conn, table, columns, rows)
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(select(table).order_by(
                table.c.trial_id))] == rows
        with engine.begin() as conn, pytest.raises(DBAPIError, match="invalid input syntax"):
            _insert_many(conn, table, columns, [("not a number", "k", "v")])
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
