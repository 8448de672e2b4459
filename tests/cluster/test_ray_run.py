"""A search on the shared local Ray instance with two worker actors, written to the store."""

import pytest

from mpsearch.cluster.job import run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.storage import COMPLETE, TrialStore

pytestmark = pytest.mark.slow


def tiny_spec(study, model, match, options, tmp_path, **fields):
    return parse_spec({
        "study": study,
        "model": {"name": model},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": match, "options": options}]},
        "workers": {"count": 2, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / 'm.db'}"},
        **fields,
    })


def test_two_workers_share_the_search_and_every_trial_is_stored(ray_session, tiny_gpt2_path,
                                                                tmp_path):
    spec = tiny_spec("ray-two", tiny_gpt2_path, r"h\.\d+\.",
                     ["int3-g32-asym", "int4-g32-asym", "int8-g32-asym"], tmp_path,
                     budget={"avg_bits": 5.0}, evaluations=24)
    store = TrialStore(spec.storage.url)
    result = run_job(spec, store)
    trials = store.trials("ray-two")
    assert result.stats.completed == 24 and len(trials) == 24
    assert {t.status for t in trials} == {COMPLETE}
    workers = {t.worker.split("@")[0] for t in trials}
    assert workers == {"w0", "w1"}, workers  # both actors did work
    assert len({t.worker for t in trials}) == 2  # two distinct processes
    assert result.study.status == "finished"
    # GPT-2's attention and MLP use Conv1D: they were discovered and searched
    assert any("c_attn" in layer.name for layer in result.study.space.layers)


def test_optuna_study_is_the_mirror_beside_the_store_and_resume_continues_it(ray_session,
                                                                             tiny_llama_path,
                                                                             tmp_path):
    import optuna

    spec = tiny_spec("tpe", tiny_llama_path, r"layers\.\d+\.",
                     ["int2-g32-asym", "int4-g32-asym", "int8-g32-asym"], tmp_path,
                     budget={"avg_bits": 4.5}, evaluations=12,
                     searcher={"name": "optuna", "params": {"sampler": "tpe", "startup_trials": 4}})
    store = TrialStore(spec.storage.url)
    run_job(spec, store)
    # Optuna's own RDB storage, in its own file (its tables and its alembic_version apart):
    # the store's mirror, one trial per stored trial, baselines included
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'm.optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12 == len(study.trials)
    again = run_job(spec, store, extend=6)
    assert again.replay_note is None  # the in-memory TPE study is replayed exactly
    assert again.resumed_trials == 12 and again.stats.completed == 6
    trials = store.trials("tpe")
    assert len({t.choices for t in trials if t.objective is not None}) == 18  # no repeats
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'm.optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 18
    assert sorted(t.user_attrs["mpsearch_trial"] for t in study.trials) == \
        [t.number for t in trials]


def test_hybrid_with_proxy_probes_one_option_per_gene_and_resumes(ray_session, tiny_llama_path,
                                                                  tmp_path):
    spec = tiny_spec("proxy", tiny_llama_path, r"layers\.\d+\.",
                     ["int2-g32-asym", "int3-g32-asym", "int4-g32-asym", "int8-g32-asym"],
                     tmp_path, budget={"avg_bits": 4.0}, evaluations=30,
                     searcher={"name": "hybrid", "params": {"proxy": True, "seeds": 2}})
    store = TrialStore(spec.storage.url)
    result = run_job(spec, store)
    genes = len(result.study.space.genes)
    probes = [t for t in store.trials("proxy") if t.origin.endswith(":probe")]
    # one option per gene, int3-g32 (4.0 bits per weight, the budget's); the base (all int8) is
    # the uniform int8 baseline, already scored
    assert len(probes) == genes and all(sorted(t.choices).count(1) == 1 for t in probes)
    assert result.stats.completed == 30
    again = run_job(spec, store, extend=5)
    assert again.replay_note is None and again.stats.completed == 5  # replayed exactly


def test_kfac_proxy_through_ray_workers_needs_no_probe_and_is_confirmed(ray_session,
                                                                        tiny_llama_path, tmp_path):
    """``proxy: kfac, anchors: false``: the workers compute the Kronecker-factored Fisher proxy
    (output gradients × their Hessians) in the setup phase, the program needs no probe, and
    ``confirm`` stores a confirmed figure on the best trials, which ``best`` returns first."""
    spec = tiny_spec("kfac", tiny_llama_path, r"layers\.\d+\.",
                     ["int2-g32-asym", "int3-g32-asym", "int4-g32-asym", "int8-g32-asym"],
                     tmp_path, budget={"avg_bits": 4.0}, evaluations=20,
                     searcher={"name": "hybrid", "confirm": 2,
                               "params": {"proxy": "kfac", "anchors": False, "seeds": 2,
                                          "selection": [[4, 2], [2, None]]}})
    store = TrialStore(spec.storage.url)
    result = run_job(spec, store)
    trials = store.trials("kfac")
    assert not [t for t in trials if t.origin.endswith(":probe")]
    assert result.stats.completed == 20
    best = store.best("kfac", top=2)
    assert best[0].confirmed is not None and best[0].confirmed > 0
    confirmed = {t.choices: t.confirmed for t in trials if t.confirmed is not None}
    assert len(confirmed) == 2  # the two best configurations, each with one figure
