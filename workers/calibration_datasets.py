"""Calibration data as users have it: Hugging Face ``datasets`` and the model's chat template.

A ``calibration.source`` other than the built-in corpus and ``.txt`` files is read with
``datasets``: a directory written by ``Dataset.save_to_disk`` (``load_from_disk``; of a
``DatasetDict`` the ``calibration.split``), a ``.parquet``, ``.arrow``, ``.json`` or ``.csv``
file (``.jsonl`` keeps its own line-by-line reader in :mod:`.calibration`, whose errors name the
line), or, only when the user names one with ``hub:NAME``, a dataset of the Hugging
Face Hub (``load_dataset(NAME, calibration.subset, split=calibration.split)``: the one source
that downloads). Local files never touch the network. The column ``calibration.text_field``
holds the text, or with ``calibration.chat_template: true`` a conversation (a list of
``{"role", "content"}`` messages) that the model's tokenizer renders with its chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

from .config import CalibrationConfig
from .errors import WorkerError
from .hub import hub_unreachable

HUB_PREFIX = "hub:"
# File suffix → the ``datasets.Dataset`` constructor that reads it (no network, no script).
_READERS = {".parquet": "from_parquet", ".arrow": "from_file", ".json": "from_json",
            ".csv": "from_csv"}
DATASET_SUFFIXES = tuple(_READERS)


def is_dataset_source(source: str) -> bool:
    """True when ``source`` is read with ``datasets`` (a hub name, a saved directory, a file of
    one of :data:`DATASET_SUFFIXES`)."""
    path = Path(source).expanduser()
    return source.startswith(HUB_PREFIX) or path.is_dir() or path.suffix in _READERS


def _open(cfg: CalibrationConfig) -> Any:
    """The ``datasets.Dataset`` of ``cfg.source`` (one split)."""
    try:
        import datasets
    except ImportError:
        raise WorkerError(f"calibration.source {cfg.source!r} is read with Hugging Face datasets, "
                          "which is not installed: pip install 'mpsearch[data]'") from None

    datasets.disable_progress_bars()
    source = cfg.source
    try:
        if source.startswith(HUB_PREFIX):
            return _load_hub_dataset(datasets, cfg)
        path = Path(source).expanduser()
        if path.is_dir():
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                if cfg.split not in data:
                    raise WorkerError(f"calibration.split: {source!r} has no split {cfg.split!r}; "
                                      f"its splits: {', '.join(data)}")
                return data[cfg.split]
            return data
        if not path.is_file():
            raise WorkerError(f"calibration.source: no such file {source!r}")
        reader = getattr(datasets.Dataset, _READERS[path.suffix])
        return reader(str(path))
    except WorkerError:
        raise
    except Exception as exc:  # datasets and pyarrow raise many kinds for one unreadable file
        if _no_rows(exc, Path(source).expanduser(), cfg.split):
            raise WorkerError(f"calibration.source: dataset {source!r} is empty (0 rows)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkerError(f"calibration.source: cannot read {source!r} with datasets: "
                          f"{first[:300]}") from None


def _load_hub_dataset(datasets: Any, cfg: CalibrationConfig) -> Any:
    """``load_dataset`` of the hub dataset ``cfg.source`` names; with the hub out of reach, from
    the datasets cache alone (its offline mode), or one line."""
    name = cfg.source[len(HUB_PREFIX):]
    unreachable = hub_unreachable()
    if unreachable is None:
        return datasets.load_dataset(name, cfg.subset, split=cfg.split)
    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
        try:
            return datasets.load_dataset(name, cfg.subset, split=cfg.split)
        except ConnectionError:  # offline, a dataset the cache lacks (other errors: _open's)
            raise WorkerError(f"calibration.source: {cfg.source!r} is not in the datasets cache, "
                              f"and {unreachable} to download it") from None


def _no_rows(exc: Exception, path: Path, split: str) -> bool:
    """Whether ``exc`` is how ``datasets`` fails on a source of no rows (rather than returning
    an empty dataset): its file builders say the split "corresponds to no data", and
    ``load_from_disk`` indexes the first of the no shards that ``state.json`` lists."""
    if "corresponds to no data" in str(exc):
        return True
    for state in (path / "state.json", path / split / "state.json"):
        if state.is_file():
            try:
                return json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []
            except (OSError, ValueError):
                return False
    return False


def dataset_column(cfg: CalibrationConfig) -> list[Any]:
    """The values of column ``cfg.text_field`` of the dataset at ``cfg.source``, in order.

    Raises :class:`WorkerError` when the dataset has no rows or no such column (naming those it
    has) or cannot be read.
    """
    data = _open(cfg)
    if data.num_rows == 0:
        raise WorkerError(f"calibration.source: dataset {cfg.source!r} is empty (0 rows)")
    if cfg.text_field not in data.column_names:
        raise WorkerError(f"calibration.text_field: dataset {cfg.source!r} has no column "
                          f"{cfg.text_field!r}; its columns: {', '.join(data.column_names)}")
    return list(data[cfg.text_field])


def render_chats(conversations: list[Any], model_path: str | None, source: str) -> list[str]:
    """Each conversation rendered by the chat template of the tokenizer at ``model_path``.

    Raises :class:`WorkerError` when the tokenizer has no chat template or a value is not a list
    of messages with ``role`` and ``content``.
    """
    from .model_loading import load_tokenizer

    if model_path is None:
        raise WorkerError("calibration.chat_template: no model is known to take the template "
                          "from")
    tokenizer = load_tokenizer(model_path)
    if not getattr(tokenizer, "chat_template", None):
        raise WorkerError(f"calibration.chat_template: the tokenizer of {model_path} has no chat "
                          "template; set chat_template: false (and text_field to a text column) "
                          "or use a chat model")
    texts = []
    for i, chat in enumerate(conversations):
        if not (isinstance(chat, list) and chat and all(
                isinstance(m, dict) and "role" in m and "content" in m for m in chat)):
            raise WorkerError(f"calibration.text_field: sample {i} of {source!r} is not a list of "
                              "messages with 'role' and 'content'")
        try:
            texts.append(tokenizer.apply_chat_template(chat, tokenize=False))
        except Exception as exc:  # a template's own error (jinja2), e.g. roles out of order
            raise WorkerError(f"calibration.chat_template: sample {i} of {source!r}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    return texts
