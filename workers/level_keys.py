"""Names and keys of the level database that need no torch: the fingerprints that key a level
set, the files of its layout, and a listing of what a root holds (``mpsearch levels --show``
reads it without starting Ray or importing torch). The database itself is :mod:`.level_db`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST, BUILD_LOG = "manifest.json", "build.log"
OPTION_FILE = "option.json"
PLANNED = "planned.json"  # option key → the layers the studies on this set asked for


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(path: str, dtype: str) -> str:
    """The identity of a model directory: its config and the size and mtime of its weight files
    (a changed checkpoint gets a new level set), and the dtype it is loaded in."""
    p = Path(path)
    parts: list[Any] = [str(p.resolve()) if p.exists() else path, dtype]
    if p.is_dir():
        config = p / "config.json"
        parts.append(config.read_text(encoding="utf-8") if config.is_file() else None)
        for f in sorted(p.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".pt"):
                st = f.stat()
                parts.append((f.name, st.st_size, st.st_mtime_ns))
    return fingerprint(*parts)


@dataclass(frozen=True)
class StoredOption:
    """One option folder of a level set: its label, how many layers it holds, their bytes."""

    label: str
    key: str
    layers: int
    planned: int  # layers the studies on this set asked for (0: not recorded)
    proxies: int
    bytes: int


@dataclass(frozen=True)
class StoredSet:
    """One level set (one model + calibration) under a root, as ``mpsearch levels --show``
    lists it."""

    key: str
    path: Path
    manifest: dict[str, Any]
    options: tuple[StoredOption, ...]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.options)


def read_planned(folder: Path) -> dict[str, list[str]]:
    """Option key → the layers studies on the level set ``folder`` asked for."""
    try:
        data = json.loads((folder / PLANNED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}


def stored_sets(root: Path) -> list[StoredSet]:
    """Every level set under ``root`` (none when it does not exist), option folders by label."""
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()):
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        planned = read_planned(folder)
        options = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                label = json.loads((sub / OPTION_FILE).read_text(encoding="utf-8"))["option"]
            except (OSError, ValueError, KeyError, TypeError):
                label = sub.name.rpartition("-")[0] or sub.name
            files = list(sub.glob("*.safetensors"))
            proxies = sub / "proxies"
            n_proxies = len(list(proxies.glob("*.json"))) if proxies.is_dir() else 0
            options.append(StoredOption(str(label), sub.name, len(files),
                                        len(planned.get(sub.name, ())), n_proxies,
                                        sum(f.stat().st_size for f in files)))
        out.append(StoredSet(folder.name, folder, manifest if isinstance(manifest, dict) else {},
                             tuple(options)))
    return out
