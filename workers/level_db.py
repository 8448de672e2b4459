"""The level database: compressed weights that are expensive to make, computed once and kept on disk.

A variant (the weight of one layer under one option) that needs calibration statistics or many
passes over the weight is computed once per model + calibration + option and stored here, so every
worker of a cluster, every later study on the same model and calibration (``resume``, ``--extend``,
a new study) and ``apply``/export read it instead of computing it again. Which variants are stored
(:func:`stored_option`):

- GPTQ integers (``rounding: gptq`` or ``gptq-act``): the Hessian of the layer's inputs plus d_col
  column steps;
- Wanda pruning (``sparsity_method: wanda``): the activation norms of the calibration inputs;
- MSE clipping (``clip: true``): 21 trial roundings of every group.

Plain RTN integers, FP8, NVFP4, MXFP4, NF4, fp16 and magnitude pruning stay in memory only: each
is one elementwise pass over the weight (about a millisecond per 8B layer on a GPU, 0.1 s on a
CPU core), cheaper than reading the same bytes back from disk, and needs no calibration data.

Layout (docs/level_db.md): under the root (the spec's ``levels.path``, or ``<store>.levels`` beside
a SQLite store), one *level set* per model + calibration, ``<root>/<set key>/``, with
``manifest.json`` (what model and calibration made it) and ``build.log`` (one line per variant
written, with the worker that computed it); one folder per option, ``<set>/<option key>/``, named
by a fingerprint of the option and its GPTQ parameters, holding ``option.json`` and one
safetensors file per layer, ``<layer name>.safetensors``: what the format really holds (packed
integer codes, fp16 scales, zero points: :mod:`.level_codec`), whose header carries the SHA-256
of its tensor bytes and the layout's version. A file is written to a temporary name and renamed,
so a reader sees a whole file or none; one whose checksum does not match (truncated, corrupted)
or of another layout version is removed and rebuilt, never used. :meth:`LevelDatabase.load`
decodes a variant on the reader's device into the weight the trial was scored with;
:meth:`LevelDatabase.load_parts` hands back its codes, scales and zero points (the exports').
Per-layer proxy errors (Hessian-weighted output error) live beside the variants in
``<option key>/proxies/<layer name>.json``, for every option (RTN ones included).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mpsearch.spaces.options import QuantOption

from . import level_codec
from .errors import WorkerError
from .level_codec import FORMAT_VERSION
from .level_keys import BUILD_LOG, MANIFEST, PLANNED, fingerprint, model_fingerprint, read_planned

__all__ = ["BUILD_LOG", "FORMAT_VERSION", "MANIFEST", "LevelDatabase", "LevelDatabaseError",
           "fingerprint", "model_fingerprint", "stored_option"]
from .registry import Encoded, needs_calibration


class LevelDatabaseError(WorkerError):
    """The level database cannot be written or read (unwritable path, full disk)."""


def stored_option(option: QuantOption) -> bool:
    """Whether ``option``'s variants go to the level database (see the module docstring)."""
    return needs_calibration(option) or option.clip


def _one_line(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    return exc.strerror or str(exc)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LevelDatabase:
    """One level set (one model + calibration) on disk: see the module docstring for the layout.

    Writes are durable once :meth:`flush` returns; :meth:`save` queues them to a background
    thread (so a search need not wait for the disk), :meth:`save_now` writes at once. Every
    write failure is a :class:`LevelDatabaseError` with one line naming the path and the cause,
    raised by the next :meth:`save` or :meth:`flush`.
    """

    def __init__(self, directory: str | Path, params: Mapping[str, Any] | None = None,
                 writer: str = "") -> None:
        """``params``: the computation's parameters that change a variant (GPTQ's dampening and
        block size), part of each option's key; ``writer``: who is writing, for ``build.log``."""
        self.dir = Path(directory)
        self.params = dict(params or {})
        self.writer = writer
        self.rejected: list[Path] = []  # files that failed their checksum (removed, rebuilt)
        self._queue: queue.Queue[tuple[str, QuantOption, level_codec.Parts, dict[str, str]]
                                 | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: LevelDatabaseError | None = None

    # -- where things are ---------------------------------------------------------------------
    def option_key(self, option: QuantOption) -> str:
        used = self.params if option.gptq else {}
        return f"{option.label}-{fingerprint(repr(option), used)[:8]}"

    def path(self, name: str, option: QuantOption) -> Path:
        return self.dir / self.option_key(option) / f"{name}.safetensors"

    def has(self, name: str, option: QuantOption) -> bool:
        """Whether a file of this layout version is stored (its checksum is checked on read)."""
        return _header_version(self.path(name, option)) == str(FORMAT_VERSION)

    def missing(self, pairs: Iterable[tuple[str, QuantOption]]) -> list[tuple[str, QuantOption]]:
        return [(n, o) for n, o in pairs if stored_option(o) and not self.has(n, o)]

    def create(self, manifest: Mapping[str, Any]) -> None:
        """Make the level set's folder and its manifest; an unwritable path is a one-line error."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            target = self.dir / MANIFEST
            if not target.is_file():
                body = {"format_version": FORMAT_VERSION, **manifest}
                _write_bytes(target, json.dumps(body, indent=1, default=str).encode())
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise LevelDatabaseError(f"levels.path: cannot write the level database at "
                                     f"{self.dir}: {_one_line(exc)}; name a writable directory "
                                     "in the spec's levels.path") from None

    def record_planned(self, pairs: Iterable[tuple[str, QuantOption]]) -> None:
        """Add ``pairs`` to the set's list of planned variants (``mpsearch levels --show``
        reports layers done out of planned)."""
        planned = {k: set(v) for k, v in read_planned(self.dir).items()}
        for name, option in pairs:
            planned.setdefault(self.option_key(option), set()).add(name)
        try:
            _write_bytes(self.dir / PLANNED, json.dumps(
                {k: sorted(v) for k, v in sorted(planned.items())}, indent=0).encode())
        except OSError as exc:
            raise LevelDatabaseError(f"level database: cannot write {self.dir / PLANNED}: "
                                     f"{_one_line(exc)}") from None

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    # -- writing ------------------------------------------------------------------------------
    def _write(self, path: Path, name: str, option: QuantOption, parts: level_codec.Parts,
               meta: dict[str, str]) -> None:
        try:
            folder = path.parent
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                _write_bytes(folder / "option.json", json.dumps(
                    {"option": option.label, "repr": repr(option), "params": self.params}).encode())
            on_cpu = {k: v.cpu() for k, v in parts.items()}
            digest = level_codec.digest(on_cpu)
            header = {**meta, "sha256": digest, "layer": name, "option": option.label,
                      "format_version": str(FORMAT_VERSION)}
            _write_bytes(path, save_safetensors(on_cpu, metadata=header))
            with open(self.dir / BUILD_LOG, "a", encoding="utf-8") as log:
                log.write(f"{time.time():.3f}\t{self.writer}\t{option.label}\t{name}\t{digest}\n")
        except OSError as exc:
            raise LevelDatabaseError(f"level database: cannot write {path}: {_one_line(exc)}"
                                     ) from None

    def save_now(self, name: str, option: QuantOption, enc: Encoded | torch.Tensor,
                 dtype: torch.dtype | None = None) -> None:
        """Write ``enc`` (a variant's parts, or a weight kept dense) at once; ``dtype``: the
        model's, that the variant is scored in (default: the dense weight's, or float32)."""
        self._write(self.path(name, option), name, option,
                    *level_codec.encode(enc, dtype or _dtype_of(enc)))

    def save(self, name: str, option: QuantOption, enc: Encoded | torch.Tensor,
             dtype: torch.dtype | None = None) -> None:
        """Queue ``enc`` to be written in the background: it is packed now on its device and
        the packed bytes (a fraction of the weight's) are copied to host memory, so a build's
        queued levels take no device memory; the writer thread, which starts at
        :meth:`start_writing` or :meth:`flush`, hashes and writes them, so a build is not slowed
        by hashing and disk writes beside it."""
        self._raise_pending()
        parts, meta = level_codec.encode(enc, dtype or _dtype_of(enc))
        self._queue.put((name, option, {k: v.cpu() for k, v in parts.items()}, meta))

    def start_writing(self) -> None:
        """Start (once) the thread that writes what :meth:`save` queued."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="level-db-writer",
                                            daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                name, option, parts, meta = item
                if self._error is None:
                    self._write(self.path(name, option), name, option, parts, meta)
            except LevelDatabaseError as exc:
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until every queued write is on disk; raises the first write's failure."""
        self.start_writing()
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- reading ------------------------------------------------------------------------------
    def _read(self, name: str, option: QuantOption
              ) -> tuple[level_codec.Parts, dict[str, str]] | None:
        """The checked tensors and metadata of a stored file (CPU); None when absent or
        rejected (a rejected file is removed and listed in :attr:`rejected`)."""
        path = self.path(name, option)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LevelDatabaseError(f"level database: cannot read {path}: {_one_line(exc)}"
                                     ) from None
        found = _verified(raw, name)
        if found is None:
            self.rejected.append(path)
            path.unlink(missing_ok=True)
        return found

    def load_parts(self, name: str, option: QuantOption, device: torch.device | str = "cpu"
                   ) -> tuple[Encoded | torch.Tensor, torch.dtype] | None:
        """The stored variant as the format holds it: its :class:`~.registry.Encoded` (integer
        codes, scales, zero points, mask; a weight kept dense: the tensor) on ``device``, and the
        dtype it was scored in; checked against its checksum. None when absent or rejected (a
        rejected file is removed and listed in :attr:`rejected`, so it is built again)."""
        found = self._read(name, option)
        return None if found is None else _decoded(found, option, device)

    def load(self, name: str, option: QuantOption,
             device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The stored variant decoded on ``device``: bit for bit the weight the trial was scored
        with; None when absent or rejected (see :meth:`load_parts`)."""
        found = self.load_parts(name, option, device)
        return None if found is None else _weight(*found)

    def load_many(self, pairs: Iterable[tuple[str, QuantOption]], threads: int = 8,
                  devices: Mapping[str, torch.device] | None = None
                  ) -> Iterable[tuple[str, QuantOption, torch.Tensor | None]]:
        """:meth:`load` of each pair, reading and checking files in ``threads`` threads (file
        reads and SHA-256 release the GIL) and decoding each on its layer's device
        (``devices``: layer → device; the CPU when absent) in this one, in order."""
        pairs = list(pairs)
        with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
            for (name, option), found in zip(pairs, pool.map(lambda p: self._read(*p), pairs),
                                             strict=True):
                device = devices[name] if devices is not None else torch.device("cpu")
                yield name, option, None if found is None else _weight(
                    *_decoded(found, option, device))

    # -- proxies ------------------------------------------------------------------------------
    def _proxy_path(self, name: str, option: QuantOption) -> Path:
        return self.dir / self.option_key(option) / "proxies" / f"{name}.json"

    def save_proxy(self, name: str, option: QuantOption, values: Mapping[str, float]) -> None:
        path = self._proxy_path(name, option)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(path, json.dumps(dict(values)).encode())
        except OSError as exc:
            raise LevelDatabaseError(f"level database: cannot write {path}: {_one_line(exc)}"
                                     ) from None

    def load_proxy(self, name: str, option: QuantOption) -> dict[str, float] | None:
        try:
            values = json.loads(self._proxy_path(name, option).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return values if isinstance(values, dict) else None

    def built(self) -> list[tuple[str, str, str]]:
        """(writer, option label, layer) of every variant written, from ``build.log``."""
        try:
            lines = (self.dir / BUILD_LOG).read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [(f[1], f[2], f[3]) for f in (ln.split("\t") for ln in lines) if len(f) >= 4]


def _decoded(found: tuple[level_codec.Parts, dict[str, str]], option: QuantOption,
             device: torch.device | str) -> tuple[Encoded | torch.Tensor, torch.dtype]:
    parts, meta = found
    enc = level_codec.decode(parts, meta, option, device)
    default = enc.dtype if isinstance(enc, torch.Tensor) else torch.float32
    return enc, level_codec.target_dtype(meta, default)


def _weight(enc: Encoded | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return enc if isinstance(enc, torch.Tensor) else level_codec.dequantize(enc, dtype)


def _dtype_of(enc: Encoded | torch.Tensor) -> torch.dtype:
    return enc.dtype if isinstance(enc, torch.Tensor) else torch.float32


def _header(raw: bytes) -> dict[str, Any]:
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or n > len(raw) - 8:
        raise ValueError("not a safetensors header")
    return json.loads(raw[8:8 + n])


def _header_version(path: Path) -> str | None:
    """The layout version a stored file's header names (None: absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n <= 0 or n > 1 << 20:
                return None
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    version = meta.get("format_version")
    return version if isinstance(version, str) else None


def _verified(raw: bytes, name: str) -> tuple[level_codec.Parts, dict[str, str]] | None:
    """The tensors and metadata of a stored file, or None when it is truncated, corrupted,
    another layer's or of another layout version (never misread)."""
    try:
        meta = _header(raw).get("__metadata__") or {}
        if meta.get("layer") != name or meta.get("format_version") != str(FORMAT_VERSION):
            return None
        parts = load_safetensors(raw)
        if level_codec.digest(parts) != meta.get("sha256"):
            return None
        return parts, meta
    except (ValueError, KeyError, SafetensorError, UnicodeDecodeError, AttributeError):
        return None
