"""The house's rules on which package may import what, checked on the source (``ast``, nothing is
imported): ``cluster -> {searcher, workers, storage} -> spaces``.

- ``spaces`` imports nothing from mpsearch; ``spaces`` and ``searcher`` import neither torch, Ray
  nor SQLAlchemy (the search receives past trials as values).
- Only ``cluster`` and the actor shell ``workers/actor.py`` import Ray.
- Only ``storage`` touches the database engine: no ``sqlalchemy`` import, ``create_engine`` or
  ``.engine`` outside it; the benchmarks never reach into a store's ``.engine`` (tests may, to
  provoke the database errors ``storage`` translates).
- Nothing outside ``cluster`` imports ``mpsearch.cluster``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spaces", "searcher", "workers", "storage", "cluster")


@dataclass(frozen=True)
class Use:
    """One import (``name``: the absolute module) or engine access in a file, at a line."""

    path: str  # relative to the repository root, e.g. "searcher/base.py"
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name}"


def _package_of(path: Path, root: Path) -> list[str]:
    """The dotted package ``path`` belongs to, as a list (``cluster/cli/run.py`` ->
    ``["mpsearch", "cluster", "cli"]``); bench/ and tests/ files are top-level scripts."""
    parts = list(path.relative_to(root).parts[:-1])
    return ["mpsearch", *parts] if parts and parts[0] in PACKAGES else parts


def _uses(path: Path, root: Path = ROOT) -> Iterator[Use]:
    rel = path.relative_to(root).as_posix()
    package = _package_of(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Use(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield Use(rel, node.lineno, module)
            for alias in node.names:  # ``from mpsearch import cluster``, ``from . import x``
                yield Use(rel, node.lineno, f"{module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr == "engine":
            yield Use(rel, node.lineno, ".engine")
        elif isinstance(node, ast.Name) and node.id == "create_engine":
            yield Use(rel, node.lineno, "create_engine")


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _all_uses(*folders: str) -> list[Use]:
    return [use for path in _files(*folders) for use in _uses(path)]


def _is(name: str, *modules: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _in(use: Use, *folders: str) -> bool:
    return any(use.path == f or use.path.startswith(f.rstrip("/") + "/") for f in folders)


def test_the_rules_see_every_kind_of_import(tmp_path):
    """The checker itself: absolute, relative, from-imports of a package and engine access."""
    pkg = tmp_path / "searcher"
    pkg.mkdir()
    (pkg / "x.py").write_text("import torch.nn\nfrom ..cluster import job\nfrom . import base\n"
                              "def f(store):\n    import ray\n    return store.engine\n")
    names = {u.name for u in _uses(pkg / "x.py", root=tmp_path)}
    assert {"torch.nn", "mpsearch.cluster", "mpsearch.cluster.job", "mpsearch.searcher.base",
            "ray", ".engine"} <= names


@pytest.mark.parametrize("folder", ["spaces", "searcher"])
def test_search_code_imports_neither_torch_ray_nor_the_database(folder):
    bad = [u for u in _all_uses(folder) if _is(u.name, "torch", "ray", "sqlalchemy")]
    assert not bad, "\n".join(map(str, bad))


def test_spaces_imports_nothing_from_mpsearch():
    bad = [u for u in _all_uses("spaces")
           if _is(u.name, "mpsearch") and not _is(u.name, "mpsearch.spaces")]
    assert not bad, "\n".join(map(str, bad))


def test_only_cluster_and_the_actor_shell_import_ray():
    bad = [u for u in _all_uses(*PACKAGES) if _is(u.name, "ray")
           and not _in(u, "cluster", "workers/actor.py")]
    assert not bad, "\n".join(map(str, bad))


def test_only_storage_touches_the_engine():
    bad = [u for u in _all_uses(*PACKAGES) if not _in(u, "storage")
           and (_is(u.name, "sqlalchemy") or u.name in (".engine", "create_engine"))]
    assert not bad, "\n".join(map(str, bad))


def test_benchmarks_go_through_the_store_not_its_engine():
    # They may open an engine of their own (a scratch PostgreSQL database to create and drop),
    # never reach into a store's: what they time is the product's path.
    bad = [u for u in _all_uses("bench") if u.name == ".engine"]
    assert not bad, "\n".join(map(str, bad))


def test_nothing_outside_cluster_imports_cluster():
    bad = [u for u in _all_uses(*PACKAGES) if _is(u.name, "mpsearch.cluster")
           and not _in(u, "cluster")]
    assert not bad, "\n".join(map(str, bad))
