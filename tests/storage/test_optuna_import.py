"""Reading an Optuna study made elsewhere as trials of a space: names and choices are checked."""

from __future__ import annotations

import optuna
import pytest

from mpsearch.storage.optuna_import import OptunaImportError, read_optuna_study

from .conftest import SPACE

LABELS = [o.label for o in SPACE.genes[0].options]


def make_study(url, name="hpo", params=("blk.0.fc", "blk.1.fc"), choices=LABELS, n=6):
    study = optuna.create_study(study_name=name, storage=url)

    def objective(trial):
        picks = [trial.suggest_categorical(p, choices) for p in params]
        if trial.number == 2:
            raise optuna.TrialPruned()
        trial.set_user_attr("perplexity", 10.0 + trial.number)
        return float(sum(choices.index(p) for p in picks))

    study.optimize(objective, n_trials=n, catch=())
    return study


def test_completed_trials_become_candidates(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = make_study(url)
    got = read_optuna_study(url, "hpo", SPACE)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.optuna_number for t in got] == [t.number for t in done]  # the pruned one is left out
    for imported, t in zip(got, done, strict=True):
        assert [SPACE.genes[g].options[c].label for g, c in enumerate(imported.candidate.choices)] \
            == [t.params["blk.0.fc"], t.params["blk.1.fc"]]
        assert imported.objective == t.value
        assert imported.extra == {"perplexity": 10.0 + t.number}


@pytest.mark.parametrize("params,choices,match", [
    (("blk.0.fc", "attn.q"), LABELS, "parameter 'attn.q' is not a layer"),
    (("blk.0.fc", "blk.1.fc"), [*LABELS[:3], "int5-g128-asym"], "choice 'int5-g128-asym'"),
    (("blk.0.fc",), LABELS, "has no parameter 'blk.1.fc'"),
])
def test_a_study_of_another_space_is_one_clear_error(tmp_path, params, choices, match):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    make_study(url, params=params, choices=choices)
    with pytest.raises(OptunaImportError, match=match):
        read_optuna_study(url, "hpo", SPACE)


def test_a_missing_study_lists_the_studies_there(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    make_study(url, name="real", n=1)
    with pytest.raises(OptunaImportError, match="no Optuna study 'hpo' .*studies there: real"):
        read_optuna_study(url, "hpo", SPACE)
