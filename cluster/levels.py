"""Where a job's level database lives, and building it ahead of time (``mpsearch levels``).

The root is the spec's ``levels.path``, else ``<store file>.levels`` beside a SQLite store, else
``~/.cache/mpsearch/levels``; under it one *level set* per model + calibration
(:func:`level_set`, docs/level_db.md). Nothing here imports torch or Ray at import time, so
``mpsearch levels --show`` lists a root without either; :func:`build_levels` starts the workers
(:mod:`.warmup`) only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpsearch.storage.profiles import calibration_fingerprint
from mpsearch.workers.config import CalibrationConfig, LevelsConfig
from mpsearch.workers.level_keys import fingerprint, model_fingerprint

DEFAULT_ROOT = Path("~/.cache/mpsearch/levels")


def levels_root(cfg: LevelsConfig, store_url: str) -> Path | None:
    """The level database's root: the spec's ``levels.path``, else beside a SQLite store file,
    else ``~/.cache/mpsearch/levels``; None when disabled."""
    if not cfg.enabled:
        return None
    if cfg.path is not None:
        return Path(cfg.path).expanduser()
    if store_url.startswith("sqlite:///") and store_url != "sqlite:///:memory:":
        return Path(store_url.removeprefix("sqlite:///") + ".levels")
    return DEFAULT_ROOT.expanduser()


def level_set(root: Path, model_path: str, dtype: str, texts: Sequence[str],
              calibration: CalibrationConfig) -> tuple[Path, dict[str, Any]]:
    """The folder of one model + calibration under ``root``, and its manifest."""
    model_fp = model_fingerprint(model_path, dtype)
    calib_fp = calibration_fingerprint(texts, calibration.seq_len)
    manifest = {"model": model_path, "dtype": dtype, "model_fingerprint": model_fp,
                "calibration": {**calibration.model_dump(mode="json"), "fingerprint": calib_fp}}
    return root / fingerprint(model_fp, calib_fp), manifest


def existing_level_set(root: str | Path | None, model_path: str, dtype: str,
                       texts: Sequence[str], calibration: CalibrationConfig) -> Path | None:
    """The level set of this model + calibration under ``root`` if one was built there (an
    export reads its variants instead of computing them again), else None."""
    if root is None:
        return None
    folder, _ = level_set(Path(root).expanduser(), model_path, dtype, texts, calibration)
    return folder if folder.is_dir() else None


def build_levels(spec: Any, address: str | None = None, listener: Any = None) -> Path:
    """Build the level database of ``spec``'s model + calibration ahead of time: start the
    spec's workers (on the Ray cluster at ``address``, or RAY_ADDRESS, else a local one), run
    their setup phases (:mod:`.warmup`: the statistics, each stored level, the proxies when the
    strategy uses them) with ``listener`` following them, write everything, stop them. Returns
    the level set's folder. Raises :class:`~mpsearch.spaces.errors.SpecError` when the spec
    disables the database, and the setup's one-line errors (unwritable path, missing model)."""
    from mpsearch.spaces.errors import SpecError
    from mpsearch.workers.level_db import LevelDatabase

    from .job import connect_for, prepare, worker_setup
    from .warmup import SetUpWorkers

    root = levels_root(spec.levels, spec.storage.url)
    if root is None:
        raise SpecError("levels.enabled is false in the spec: there is no level database to "
                        "build; set it to true (or drop it)")
    job = prepare(spec)  # the model, the space, the calibration texts: before any worker
    folder, manifest = level_set(root, job.model.path, spec.model.dtype, job.texts,
                                 spec.calibration)
    LevelDatabase(folder).create(manifest)  # an unwritable path: one line, before Ray starts
    connect_for(spec, address)
    workers = SetUpWorkers(job, worker_setup(job), spec.storage.url, listener)
    try:
        assert workers.db_dir is not None
        return workers.db_dir
    finally:
        workers.close()  # waits for every worker's writes
