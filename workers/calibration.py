"""Calibration text: a built-in real-text source needing no download, or the user's own data.

Sources: the built-in corpus (below), a ``.txt`` file (a sample per non-empty line), a ``.jsonl``
file (one object per line), or anything ``datasets`` reads (:mod:`.calibration_datasets`: a
saved dataset directory, parquet, arrow, json, csv, or a named hub dataset). A chat model's
conversations are rendered with its tokenizer's chat template (``calibration.chat_template``).

The built-in source is prose from the docstrings of Python's standard library: real English about
real software, on every machine that runs mpsearch. The driver reads the texts once and ships them
to workers, so every worker scores on identical samples even when nodes run other Python builds.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import random
import re
from pathlib import Path
from typing import Any

from mpsearch.spaces.files import read_text_file

from .calibration_datasets import DATASET_SUFFIXES, dataset_column, is_dataset_source, render_chats
from .config import CalibrationConfig
from .errors import WorkerError

BUILTIN_SOURCE = "stdlib-docs"

# A fixed, ordered list, so the corpus is the same on every run of one Python version.
_STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmath", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "ftplib", "functools",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "lzma", "mailbox", "math", "mimetypes", "multiprocessing", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "poplib", "pprint", "queue",
    "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)
_MIN_CHARS = 80  # shorter paragraphs are mostly signatures and one-word notes, not prose


def _paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", doc):
        text = " ".join(block.split())
        letters = sum(c.isalpha() or c == " " for c in text)
        if len(text) >= _MIN_CHARS and letters >= 0.85 * len(text) and ">>>" not in text:
            out.append(text)
    return out


def _module_source(name: str) -> str | None:
    """The source text of a standard-library module, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None  # built in or compiled: no source to read
    try:
        return Path(spec.origin).read_text(encoding="utf-8")
    except OSError:
        return None


def _docstrings(source: str) -> list[str]:
    """Docstrings of the module and of its public classes, functions and methods, in file order."""
    tree = ast.parse(source)
    docs = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if (isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and not node.name.startswith("_")):
            docs.append(ast.get_docstring(node) or "")
    return docs


@functools.cache
def stdlib_texts() -> tuple[str, ...]:
    """Every prose paragraph of the listed modules' docstrings, deduplicated, in a fixed shuffle.

    Docstrings are read from the modules' source files with ``ast``, never from imported objects,
    so the corpus depends only on the Python version, not on what the process has imported (Ray,
    for one, replaces functions of ``inspect``).
    """
    seen: dict[str, None] = {}
    for mod_name in _STDLIB_MODULES:
        source = _module_source(mod_name)
        if source is None:
            continue
        for doc in _docstrings(source):
            for para in _paragraphs(doc):
                seen.setdefault(para, None)
    texts = list(seen)
    random.Random(0).shuffle(texts)  # mix modules, so any slice reads like the whole
    return tuple(texts)


def _file_values(path: Path, text_field: str) -> list[Any]:
    """The samples of a ``.txt`` file (its non-empty lines) or the ``text_field`` values of a
    ``.jsonl`` file (an error names the line)."""
    content = read_text_file(path, "calibration file", WorkerError)
    if path.suffix != ".jsonl":
        return [line.strip() for line in content.splitlines() if line.strip()]
    values = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise WorkerError(f"calibration.source: {path}:{lineno} is not a JSON object")
        if text_field not in record:
            raise WorkerError(f"calibration.text_field: {path}:{lineno} has no field "
                              f"{text_field!r}; its fields: {', '.join(map(str, record)) or 'none'}")
        values.append(record[text_field])
    return values


def _source_values(cfg: CalibrationConfig) -> list[Any]:
    if cfg.source == BUILTIN_SOURCE:
        return list(stdlib_texts())
    if is_dataset_source(cfg.source):
        return dataset_column(cfg)
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise WorkerError(f"calibration.source: no such file {cfg.source!r} (use "
                          f"{BUILTIN_SOURCE!r}, a .txt/.jsonl path, a saved dataset directory, a "
                          f"{'/'.join(DATASET_SUFFIXES)} file or hub:NAME)")
    return _file_values(path, cfg.text_field)


def load_texts(cfg: CalibrationConfig, model_path: str | None = None) -> list[str]:
    """The ``cfg.samples`` texts starting at ``cfg.offset`` of the configured source; with
    ``cfg.chat_template``, conversations rendered by the template of ``model_path``'s tokenizer.

    Raises :class:`WorkerError` (one line, naming the field) for a source that is missing,
    unreadable or empty, a column it lacks, too few samples, a value that is not text (or, with
    the chat template, not a conversation), or a tokenizer without a chat template.
    """
    values = _source_values(cfg)
    if not values:
        raise WorkerError(f"calibration.source: {cfg.source!r} has no samples (it is empty)")
    chosen = values[cfg.offset: cfg.offset + cfg.samples]
    if len(chosen) < cfg.samples:
        raise WorkerError(f"calibration: source {cfg.source!r} has {len(values)} samples, "
                          f"{cfg.offset + cfg.samples} needed (offset + samples)")
    if cfg.chat_template:
        return render_chats(chosen, model_path, cfg.source)
    for i, value in enumerate(chosen):
        if not isinstance(value, str):
            hint = ("; for conversations set calibration.chat_template: true"
                    if isinstance(value, list) else "")
            raise WorkerError(f"calibration.text_field: sample {cfg.offset + i} of "
                              f"{cfg.source!r} is {type(value).__name__}, not text{hint}")
    return chosen
