"""``searcher.fidelity: auto`` (the default): multi-step selection where it pays, that is from
``SCREEN_FROM[device]`` calibration samples on (64 on a CPU, 128 on a GPU), for the strategies
that have it; a study stored before
the field keeps scoring everything on every sample. What reads the figures back (``best``,
``pareto``, progress, the Optuna mirror) compares figures on every sample only. The product's
driver over a synthetic executor, SQLite store."""

from __future__ import annotations

import random

import optuna
import pytest

from mpsearch.cluster.driver import drive
from mpsearch.cluster.spec import parse_spec
from mpsearch.searcher import SearcherConfig, SerialExecutor
from mpsearch.searcher.registry import SCREEN_FROM, with_fidelity
from mpsearch.spaces import Budget, LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import COMPLETE, TrialStore
from mpsearch.storage.optuna_mirror import optuna_storage_url
from mpsearch.storage.progress import study_progress
from mpsearch.storage.records import CalibrationRecord

OPTIONS = tuple(parse_option(o) for o in ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym",
                                          "int8-g128-asym", "fp16"))
SPACE = build_space([LayerInfo(f"blocks.{i}.fc", 256, 128) for i in range(8)],
                    [LayerRule("blocks", OPTIONS)], (), None)
BUDGET = Budget(avg_bits=4.25)


def score(candidate):
    """All samples: the true value. A screen: twenty times lower (another scale) and noisy, so
    a screened figure would win every comparison it wrongly entered."""
    value = sum((i + 1) * 2.0 ** -SPACE.genes[i].options[c].bits
                for i, c in enumerate(candidate.choices))
    if candidate.samples is None:
        return value
    return value * 0.05 * (1 + random.Random(hash(candidate.choices)).uniform(-0.1, 0.1))


def session(store, name, stored_searcher, samples=256, evaluations=80, mirror=False,
            config=None, device="cpu"):
    """A study whose stored spec has ``stored_searcher`` as its searcher section, on ``samples``
    calibration samples, driven to ``evaluations``: its trials and the session's best."""
    study, _ = store.open_study(name, {"searcher": stored_searcher}, {"name": name}, SPACE, "m",
                                "o", evaluations, calibration=CalibrationRecord(samples=samples))
    result = drive(store, study, config or SearcherConfig(name="evolutionary"), BUDGET,
                   lambda recorder: SerialExecutor(score, slots=2), optuna_mirror=mirror,
                   device=device)
    return store.trials(name), result.stats.best  # the best the run's progress bar shows


CPU, GPU = SCREEN_FROM["cpu"], SCREEN_FROM["cuda"]


@pytest.mark.parametrize("config, samples, device, selection", [
    (SearcherConfig(), CPU, "cpu", [[16, CPU // 8], [4, None]]),
    (SearcherConfig(), 512, "cpu", [[16, 64], [4, None]]),
    (SearcherConfig(), CPU - 1, "cpu", None),  # too few samples to screen on an eighth
    # a GPU: a screen on 8 of 64 samples costs nearly what the full evaluation does
    (SearcherConfig(), CPU, "cuda", None),
    (SearcherConfig(), GPU - 1, "cuda", None),
    (SearcherConfig(), GPU, "cuda", [[16, GPU // 8], [4, None]]),
    (SearcherConfig(), 512, "cuda", [[16, 64], [4, None]]),
    (SearcherConfig(), None, "cpu", None),  # a study stored without its calibration record
    (SearcherConfig(fidelity="full"), 512, "cpu", None),
    (SearcherConfig(params={"selection": [[8, 4], [2, None]], "offspring": 8}), 512, "cpu",
     [[8, 4], [2, None]]),  # the spec's own is kept
    (SearcherConfig(name="hybrid", params={"offspring": 6}), 256, "cuda", [[6, 32], [1, None]]),
    (SearcherConfig(name="integer-program"), 512, "cpu", None),  # no selection to give
    (SearcherConfig(name="optuna"), 512, "cpu", None),
    (SearcherConfig(name="evolutionary-population"), 512, "cpu", None),
])
def test_auto_fidelity_gives_a_selection_where_it_pays(config, samples, device, selection):
    made = with_fidelity(config, samples, device)
    assert made.params.get("selection") == selection
    made.check()  # a valid strategy, as the driver builds it


@pytest.mark.parametrize("device, screens", [("cpu", True), ("cuda", False)])
def test_the_driver_screens_by_the_workers_device(tmp_path, device, screens):
    """The same study on 64 samples: its CPU workers screen, its GPU workers do not."""
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    trials, _ = session(store, "s", {"name": "evolutionary", "fidelity": "auto"}, samples=64,
                        evaluations=60, device=device)
    samples = {t.samples for t in trials if t.status == COMPLETE}
    assert samples == ({None, 8} if screens else {None})


def test_a_new_study_screens_and_every_read_path_compares_full_figures(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    trials, shown = session(store, "auto", {"name": "evolutionary", "fidelity": "auto"},
                            mirror=True)
    done = [t for t in trials if t.status == COMPLETE]
    screened = [t for t in done if t.samples is not None]
    full = [t for t in done if t.samples is None]
    assert screened and full and {t.samples for t in screened} == {256 // 8}
    feasible_full = [t for t in full if t.feasible]
    # every screen is lower than any feasible full figure: none of them may win a comparison
    assert max(t.objective for t in screened) < min(t.objective for t in feasible_full)
    best = store.best("auto", top=len(feasible_full) + 3)
    assert [t.samples for t in best[:len(feasible_full)]] == [None] * len(feasible_full)
    assert best[0].objective == min(t.objective for t in feasible_full)
    assert all(t.samples is None for t in store.pareto("auto"))
    assert shown == best[0].objective
    (progress,) = study_progress(store, "auto")
    assert progress.best == min(t.objective for t in feasible_full)
    # the Optuna mirror: a screen is a pruned trial with its figure at step = its samples
    study = optuna.load_study(study_name="auto", storage=optuna_storage_url(store.url))
    by_number = {t.user_attrs["mpsearch_trial"]: t for t in study.trials}
    for t in done:
        mirrored = by_number[t.number]
        if t.samples is None:
            assert mirrored.state == optuna.trial.TrialState.COMPLETE
            assert mirrored.value == t.objective
        else:
            assert mirrored.state == optuna.trial.TrialState.PRUNED
            assert mirrored.intermediate_values == {t.samples: t.objective}
    # Optuna reads the budget from the constraints attribute: the best feasible full figure
    assert study.best_value == min(t.objective for t in feasible_full)


@pytest.mark.parametrize("stored", [{"name": "evolutionary"},  # stored before the field
                                    {"name": "evolutionary", "fidelity": "full"}])
def test_a_study_stored_before_the_field_or_at_full_scores_every_sample(tmp_path, stored):
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    trials, _ = session(store, "old", stored)
    assert len(trials) >= 80 and all(t.samples is None for t in trials)
    # resumed with more evaluations, still at full fidelity
    trials, _ = session(store, "old", stored, evaluations=120)
    assert len(trials) >= 120 and all(t.samples is None for t in trials)


def test_a_resumed_auto_study_goes_on_screening_without_evaluating_again(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}")
    stored = {"name": "evolutionary", "fidelity": "auto"}
    first, _ = session(store, "auto", stored, evaluations=60)
    again, _ = session(store, "auto", stored, evaluations=60)
    assert [(t.number, t.samples, t.objective) for t in again] == \
        [(t.number, t.samples, t.objective) for t in first]
    more, _ = session(store, "auto", stored, evaluations=100)
    assert any(t.samples is not None for t in more[len(first):])


def test_the_default_leaves_the_identity_of_earlier_studies():
    base = {"study": "s", "budget": {"avg_bits": 4.25}, "searcher": {"name": "evolutionary"}}
    default = parse_spec(base)
    assert default.searcher.fidelity == "auto"
    auto = parse_spec({**base, "searcher": {"name": "evolutionary", "fidelity": "auto"}})
    full = parse_spec({**base, "searcher": {"name": "evolutionary", "fidelity": "full"}})
    assert default.identity() == auto.identity()
    assert "fidelity" not in default.identity()["searcher"]  # as a study stored before it
    assert full.identity() != default.identity()
    with pytest.raises(Exception, match="fidelity"):
        parse_spec({**base, "searcher": {"name": "evolutionary", "fidelity": "some"}})
