"""A search on the shared local Ray instance with two worker actors, written to the store."""

import pytest

from mpsearch.cluster.job import run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.storage import COMPLETE, TrialStore

pytestmark = pytest.mark.slow


def test_two_workers_share_the_search_and_every_trial_is_stored(ray_session, tiny_gpt2_path,
                                                                tmp_path):
    spec = parse_spec({
        "study": "ray-two",
        "model": {"name": tiny_gpt2_path},
        "calibration": {"samples": 4, "seq_len": 16},
        "space": {"layers": [{"match": r"h\.\d+\.",
                              "options": ["int3-g32-asym", "int4-g32-asym", "int8-g32-asym"]}]},
        "budget": {"avg_bits": 5.0},
        "evaluations": 24,
        "workers": {"count": 2, "cpus": 1},
        "storage": {"url": f"sqlite:///{tmp_path / 's.db'}"},
    })
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
