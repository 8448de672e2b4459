"""A model or calibration dataset that would have to be downloaded from a hub that cannot be
reached fails at once in one line, instead of after the hub client's five retries; offline mode,
a cached copy and a proxy are left to the loaders."""

import socket

import pytest
from huggingface_hub import constants

from mpsearch.workers.calibration_datasets import dataset_column
from mpsearch.workers.config import CalibrationConfig
from mpsearch.workers.errors import ModelNotFoundError, WorkerError
from mpsearch.workers.model_paths import resolve_model_path


@pytest.fixture
def closed_port():
    with socket.socket() as s:  # bound, never listening: a connection is refused
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def online(monkeypatch, closed_port, tmp_path):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return closed_port


def test_an_unreachable_hub_is_one_line(online):
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path("someone/some-model")
    message = str(exc.value)
    assert message.startswith("model 'someone/some-model' is not a local directory nor in the "
                              "Hugging Face cache")
    assert f"http://127.0.0.1:{online} cannot be reached (Connection refused)" in message
    assert "\n" not in message


def test_offline_cached_or_behind_a_proxy_is_left_to_the_loader(online, monkeypatch, tmp_path):
    # a cached config: the loader reads the cache
    snapshot = tmp_path / "hub" / "models--someone--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = tmp_path / "hub" / "models--someone--cached" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    assert resolve_model_path("someone/cached") == "someone/cached"
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("someone/not-cached")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{online}")  # the proxy decides
    assert resolve_model_path("someone/not-cached") == "someone/not-cached"
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the cache alone is asked
    assert resolve_model_path("someone/not-cached") == "someone/not-cached"


def test_a_hub_dataset_out_of_reach_comes_from_the_datasets_cache_or_is_one_line(online,
                                                                                 monkeypatch,
                                                                                 tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    # what load_dataset("someone/ds") leaves in the cache: one split's Arrow file and its info
    datasets.Dataset.from_dict({"text": ["a b c", "d e f"]}).to_parquet(tmp_path / "d.parquet")
    datasets.load_dataset("parquet", data_files=str(tmp_path / "d.parquet"), split="train")
    built = next((tmp_path / "datasets" / "parquet").glob("default-*/0.0.0/*/"))
    entry = tmp_path / "datasets" / "someone___ds" / "default" / "0.0.0" / "abc"
    entry.mkdir(parents=True)
    (entry / "dataset_info.json").write_bytes((built / "dataset_info.json").read_bytes())
    (entry / "ds-train.arrow").write_bytes((built / "parquet-train.arrow").read_bytes())

    offline = datasets.config.HF_HUB_OFFLINE
    assert dataset_column(CalibrationConfig(source="hub:someone/ds")) == ["a b c", "d e f"]
    with pytest.raises(WorkerError, match="cannot read 'hub:someone/ds' with datasets: .*"
                       "validation") as wrong_split:  # cached, but not that split
        dataset_column(CalibrationConfig(source="hub:someone/ds", split="validation"))
    assert "not in the datasets cache" not in str(wrong_split.value)
    with pytest.raises(WorkerError) as exc:
        dataset_column(CalibrationConfig(source="hub:someone/other"))
    assert str(exc.value) == (f"calibration.source: 'hub:someone/other' is not in the datasets "
                              f"cache, and http://127.0.0.1:{online} cannot be reached "
                              f"(Connection refused) to download it")
    assert datasets.config.HF_HUB_OFFLINE is offline  # the offline mode was for these calls
