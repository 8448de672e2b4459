"""Every study is an Optuna study: sessions of the product's driver over a synthetic objective, on
SQLite and PostgreSQL, read back through ``optuna.load_study``, optuna-dashboard's own app and the
CLI; switching strategy on resume; adopting an Optuna study; bad input leaves both stores alone."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import Counter
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from mpsearch.cluster.cli import app
from mpsearch.cluster.driver import drive
from mpsearch.cluster.spec import parse_spec
from mpsearch.searcher import SearcherConfig
from mpsearch.searcher.loop import Outcome
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import COMPLETE, FAILED, TrialStore
from mpsearch.storage.optuna_mirror import optuna_storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)

LABELS = ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16")
_rng = random.Random(3)
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 128 * _rng.choice([1, 2, 4]), 128)
                     for i in range(8)], [LayerRule("blocks", tuple(map(parse_option, LABELS)))],
                    (), None)
BUDGET = Budget(avg_bits=4.25)
TINY = ("int2-g32-asym", "int3-g32-asym", "int4-g32-asym", "int8-g32-asym")  # the tiny Llama's
SENS = [random.Random(5).uniform(0.1, 10) * (i + 1) for i in range(len(SPACE.genes))]


def objective(candidate):
    return sum(s * 2.0 ** -g.options[c].bits
               for s, g, c in zip(SENS, SPACE.genes, candidate.choices, strict=True))


class SyntheticExecutor:
    """Two slots; results in submission order; every candidate whose choices sum to a multiple
    of 11 fails (so the mirror has failed trials too)."""

    def __init__(self, recorder):
        self.flush, self.pending = recorder.flush, []

    slots = 2

    def submit(self, key, candidate):
        self.pending.append((key, candidate))

    def collect(self):
        self.flush()
        done, self.pending = self.pending, []
        return [(k, Outcome(None if sum(c.choices) % 11 == 0 else objective(c), 0.0, "w",
                            None if sum(c.choices) % 11 else "synthetic failure",
                            {"perplexity": 1 + objective(c)}))
                for k, c in done]

    def shutdown(self):
        self.pending = []


def open_study(store, name, evaluations, searcher=None):
    spec = parse_spec({"study": name, "budget": {"avg_bits": BUDGET.avg_bits},
                       "searcher": searcher or {"name": "evolutionary",
                                                "params": {"offspring": 6}},
                       "evaluations": evaluations, "storage": {"url": store.url}})
    data = spec.model_dump(mode="json")
    study, _ = store.open_study(name, data, data, SPACE, "synthetic", "kl", evaluations,
                                budget=BUDGET)
    return study, spec


def session(store, name, evaluations=30, extend=0, switch_to=None, searcher=None):
    study, spec = open_study(store, name, evaluations, searcher)
    return drive(store, study, spec.searcher, BUDGET, SyntheticExecutor, extend=extend,
                 switch_to=switch_to)


def cli(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def mirror(store, name):
    return optuna.load_study(study_name=name, storage=optuna_storage_url(store.url))


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:6]}"  # PostgreSQL keeps the optuna schema between tests


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def dashboard_json(storage_url, path):
    """GET ``path`` from optuna-dashboard's own bottle app, served on 127.0.0.1 in a thread."""
    from optuna_dashboard import wsgi

    server = make_server("127.0.0.1", 0, wsgi(storage_url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def get(p):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{p}",
                                        timeout=30) as r:
                return json.loads(r.read())
        return get(path(get) if callable(path) else path)
    finally:
        server.shutdown()
        server.server_close()


def test_evolutionary_study_is_an_optuna_study(store_url):
    store = TrialStore(store_url)
    name = unique("evo")
    result = session(store, name, 30)
    assert result.mirror_note is None
    trials = store.trials(name)
    assert {t.status for t in trials} == {COMPLETE, FAILED}

    study = mirror(store, name)
    assert len(study.trials) == len(trials)  # every completed and failed trial
    assert Counter(t.state.name for t in study.trials) == \
        Counter({COMPLETE: "COMPLETE", FAILED: "FAIL"}[t.status] for t in trials)
    best = json.loads(cli("best", "--study", name, "--db", store_url, "--json", "--top", "1"))[0]
    assert study.best_value == best["objective"]
    assert study.best_trial.params == best["layers"]  # one categorical per layer (gene)
    assert study.best_trial.user_attrs["mpsearch_trial"] == best["trial"]
    assert study.best_trial.user_attrs["perplexity"] == pytest.approx(1 + best["objective"])

    # optuna-dashboard's API shows the study, its parameters and which trials broke the budget
    url = optuna_storage_url(store_url)
    summaries = dashboard_json(url, "/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
    detail = dashboard_json(url, f"/api/studies/{study_id}")
    shown = {t["number"]: t for t in detail["trials"]}
    by_number = {t.number: t for t in trials}
    for t in study.trials:
        stored = by_number[t.user_attrs["mpsearch_trial"]]
        (constraint,) = shown[t.number]["constraints"]
        assert (constraint <= 0) == stored.feasible
        assert len(shown[t.number]["params"]) == len(SPACE.genes)
    assert any(c > 0 for t in shown.values() for c in t["constraints"])  # over-budget baselines
    assert detail["name"] == name and detail["directions"] == ["minimize"]
    assert {p["name"] for p in detail["intersection_search_space"]} == \
        {g.name for g in SPACE.genes}
    assert {"perplexity", "avg_bits", "mpsearch_trial"} <= {a["key"] for a in
                                                            detail["union_user_attrs"]}


def test_a_deleted_mirror_is_rebuilt_by_the_next_command(store_url, tmp_path):
    store = TrialStore(store_url)
    name = unique("gone")
    session(store, name, 16)
    url = optuna_storage_url(store_url)
    if store_url.startswith("sqlite"):
        os.remove(url.removeprefix("sqlite:///"))
    else:
        optuna.delete_study(study_name=name, storage=url)
    cli("status", "--study", name, "--db", store_url)
    assert len(mirror(store, name).trials) == len(store.trials(name))


@pytest.mark.parametrize("strategy,params", [
    ("optuna", {"sampler": "tpe", "startup_trials": 4}),
    ("integer-program", {}),
    ("random", {}),
])
def test_resume_with_another_strategy(tmp_path, strategy, params):
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    session(store, "switch", 30)
    before = store.best("switch", top=1)[0].objective
    first = len(store.trials("switch"))
    result = session(store, "switch", 30, extend=20,
                     switch_to=SearcherConfig(name=strategy, params=params))
    _check_switched(store, "switch", result, 50, before, strategy, first)
    status = json.loads(cli("status", "--study", "switch", "--db", store.url, "--json"))[0]
    assert [(s["name"], s["from_trial"]) for s in status["strategies"]] == \
        [("evolutionary", 0), (strategy, first)]
    assert f"{strategy} from trial {first}" in cli("status", "--db", store.url)
    # the switched strategy is what a later resume continues, replayed exactly
    again = session(store, "switch", 30, extend=5)
    assert again.replay_note is None
    _check_switched(store, "switch", again, 55, before, strategy, first)


def _check_switched(store, name, result, completed, before, strategy, first):
    trials = store.trials(name)
    done = [t for t in trials if t.status == COMPLETE]
    assert len(done) == completed == result.resumed_trials + result.stats.completed
    assert max(Counter(t.choices for t in done).values()) == 1  # no configuration twice
    assert store.best(name, top=1)[0].objective <= before
    assert len(mirror(store, name).trials) == len(trials)
    # from the switch on, the new strategy proposes (a failed baseline is tried again first)
    assert all(t.origin.startswith((strategy, "uniform")) for t in trials if t.number >= first)
    assert any(t.origin.startswith(strategy) for t in trials if t.number >= first)


@pytest.mark.postgres
def test_resume_with_optuna_on_postgres(pg_url):
    from sqlalchemy import create_engine

    from mpsearch.storage.models import Base

    engine = create_engine(pg_url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    store = TrialStore(pg_url)
    name = unique("pgswitch")
    session(store, name, 24)
    before = store.best(name, top=1)[0].objective
    first = len(store.trials(name))
    result = session(store, name, 24, extend=12, switch_to=SearcherConfig(
        name="optuna", params={"sampler": "tpe", "startup_trials": 4}))
    _check_switched(store, name, result, 36, before, "optuna", first)


def test_nsga2_study_has_two_directions(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 'm.db'}")
    session(store, "pareto", 20, searcher={"name": "optuna",
                                           "params": {"sampler": "nsga2", "population": 4}})
    study = mirror(store, "pareto")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["kl", "avg_bits"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(t.values[1] == pytest.approx(t.user_attrs["avg_bits"]) for t in complete)
    assert 1 <= len(study.best_trials) < len(complete)  # a Pareto front


def run_cli(*args, cwd):
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def snapshot(store_url, optuna_url):
    """Everything both stores hold, to check that bad input changed neither."""
    store = TrialStore(store_url)
    rows = {s.name: (s.evaluations, s.status, [(t.number, t.status, t.objective)
                                               for t in store.trials(s.name)])
            for s in store.studies()}
    studies = {s.study_name: [(t.number, t.state.name, t.values, t.params) for t in
                              optuna.load_study(study_name=s.study_name, storage=optuna_url).trials]
               for s in optuna.get_all_study_summaries(optuna_url)}
    return rows, studies


@pytest.mark.slow
def test_import_optuna_then_resume_and_bad_input(ray_session, tiny_llama_path, tmp_path,
                                                cli_inprocess):
    """An Optuna study over the tiny Llama's layers becomes an mpsearch study that resumes; an
    Optuna study of other parameters, an unknown strategy and a name taken by a foreign Optuna
    study are one line each, exit 1, and leave both stores as they were."""
    from mpsearch.cluster.job import prepare

    db = f"sqlite:///{tmp_path / 'store.db'}"
    fields = {"study": "adopted", "model": {"name": tiny_llama_path},
              "calibration": {"samples": 4, "seq_len": 16},
              "space": {"layers": [{"match": r"layers\.\d+\.", "options": list(TINY)}]},
              "budget": {"avg_bits": 4.5}, "evaluations": 20,
              "searcher": {"name": "evolutionary", "params": {"offspring": 4}},
              "storage": {"url": db}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(fields))
    space = prepare(parse_spec(fields)).space
    hpo = f"sqlite:///{tmp_path / 'hpo.db'}"
    theirs = optuna.create_study(study_name="hpo", storage=hpo)
    theirs.optimize(lambda t: sum(TINY.index(t.suggest_categorical(g.name, list(TINY)))
                                  for g in space.genes) * -0.1 + 3, n_trials=8)

    result = run_cli("import-optuna", "--study-name", "hpo", "--storage", hpo,
                     "--spec", str(spec_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    store = TrialStore(db)
    imported = store.trials("adopted")
    assert len(imported) == 8 and {t.status for t in imported} == {COMPLETE}
    assert sorted(t.objective for t in imported) == sorted(t.value for t in theirs.trials)
    assert len(mirror(store, "adopted").trials) == 8
    status = json.loads(cli("status", "--study", "adopted", "--db", db, "--json"))[0]
    assert [(s["name"], s["from_trial"]) for s in status["strategies"]] == \
        [("optuna-import", 0), ("evolutionary", 8)]
    # resumed with the spec's strategy, told every imported trial first
    spec = parse_spec(store.study("adopted").spec)
    again = drive(store, store.study("adopted"), spec.searcher, BUDGET_OF(spec),
                  TinyExecutor, extend=4)
    assert again.replay_note is None and again.resumed_trials == 8
    done = [t for t in store.trials("adopted") if t.status == COMPLETE]
    assert len(done) == 24 and max(Counter(t.choices for t in done).values()) == 1

    # bad input: one line, exit 1, neither store changed
    optuna_url = optuna_storage_url(db)
    other = optuna.create_study(study_name="other", storage=hpo)
    other.optimize(lambda t: t.suggest_float("lr", 0, 1), n_trials=2)
    foreign = optuna.create_study(study_name="taken", storage=optuna_url)
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({**fields, "study": "new"}))
    (tmp_path / "taken.yaml").write_text(yaml.safe_dump({**fields, "study": "taken"}))
    before = snapshot(db, optuna_url)
    for args, expected in (  # through the entry point, in this process (on the session's Ray)
        (("import-optuna", "--study-name", "other", "--storage", hpo, "--spec",
          str(tmp_path / "new.yaml")), "parameter 'lr' is not a layer"),
        (("resume", "--study", "adopted", "--db", db, "--searcher", "bogus"),
         "unknown strategy 'bogus'; valid: evolutionary"),
        (("run", str(tmp_path / "taken.yaml")), "Optuna study 'taken' in"),
    ):
        cli_inprocess.assert_one_line_error(cli_inprocess.invoke(*args), expected)
        assert snapshot(db, optuna_url) == before


def BUDGET_OF(spec):  # noqa: N802 - reads like the constant above
    return spec.budget.to_budget()


class TinyExecutor(SyntheticExecutor):
    """The synthetic executor with a fixed pseudo-objective for the tiny model's genes."""

    def collect(self):
        self.flush()
        done, self.pending = self.pending, []
        return [(k, Outcome(3 - 0.1 * sum(c.choices), 0.0, "w")) for k, c in done]


def test_bad_input_through_the_driver_changes_neither_store(store_url):
    """On both backends: a foreign Optuna study of the name and an unknown strategy are refused
    by the driver before it writes anything (the CLI's one-line form is tested above)."""
    from mpsearch.cluster.mirror import check_mirror
    from mpsearch.spaces.errors import SpecError
    from mpsearch.storage.optuna_mirror import MirrorConflictError
    from mpsearch.storage.strategies import strategy_history

    store = TrialStore(store_url)
    name = unique("bad")
    session(store, name, 10)
    url = optuna_storage_url(store_url)
    taken = unique("taken")
    optuna.create_study(study_name=taken, storage=url).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(MirrorConflictError, match=f"Optuna study '{taken}'"):
        check_mirror(store, taken)  # what run does before it creates the study
    with pytest.raises(SpecError, match="unknown strategy 'bogus'"):
        session(store, name, 10, extend=5, switch_to=SearcherConfig(name="bogus"))
    study = store.study(name)
    assert study.evaluations == 10 and len(strategy_history(store, study)) == 1
    assert len(store.trials(name)) == len(mirror(store, name).trials)
    (theirs,) = optuna.load_study(study_name=taken, storage=url).trials
    assert set(theirs.params) == {"x"} and "mpsearch_trial" not in theirs.user_attrs
