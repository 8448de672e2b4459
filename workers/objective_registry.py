"""Which objectives a spec may name: a spec is data, never a way to call arbitrary code.

A spec's ``objective`` is one of

* a built-in name (``auto``, ``kl``, ``embedding_distortion``);
* the name of an entry point of an installed package, group ``mpsearch.objectives``
  (``[project.entry-points."mpsearch.objectives"] my-loss = "my_pkg.losses:my_loss"``): installing
  the package is what registers it;
* ``path/to/file.py:function``, a function in a Python file the spec names by path (the user's own
  file, like the calibration file). Its signature is checked at spec time from the file's syntax
  tree, without running it.

Any other ``module:function`` (``os:system``) is refused at spec time. A user objective is called as
``function(reference, output, batch)`` and returns the batch's mean loss (see :mod:`.objectives`).
Kept free of torch: the spec is validated without it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.files import read_text_file

from .errors import WorkerError

BUILTIN_OBJECTIVES = ("auto", "kl", "embedding_distortion")
ENTRY_POINT_GROUP = "mpsearch.objectives"
USER_ARGS = ("reference", "output", "batch")  # what a user objective is called with, in order


def registered_objectives() -> dict[str, EntryPoint]:
    """Objectives installed packages register, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _split_file_ref(value: str) -> tuple[Path, str] | None:
    """(file, function) of ``path/to/file.py:function``; None when ``value`` is not of that form."""
    path, sep, name = value.rpartition(":")
    if not sep or not path.endswith(".py"):
        return None
    return Path(path).expanduser(), name


def _valid_names() -> str:
    names = [*BUILTIN_OBJECTIVES, *sorted(registered_objectives())]
    return (f"use one of {', '.join(names)} (entry points of group {ENTRY_POINT_GROUP!r} are "
            "registered by installed packages), or 'path/to/file.py:function'")


def _check_arity(params: list[tuple[str, bool, bool]], where: str) -> None:
    """``params``: (kind, has_default, is_var) of each parameter; three positionals must bind."""
    positional = [p for p in params if p[0] == "positional"]
    required_kw = [p for p in params if p[0] == "keyword" and not p[1]]
    var_positional = any(p[0] == "var" for p in params)
    takes = len(positional) >= len(USER_ARGS) or var_positional
    required = sum(1 for p in positional if not p[1])
    if not takes or required > len(USER_ARGS) or required_kw:
        raise ValueError(f"{where} must take three arguments ({', '.join(USER_ARGS)})")


def _check_file_function(path: Path, name: str, value: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"objective {value!r}: {name!r} is not a function name")
    try:
        source = read_text_file(path, "objective file", SpecError)
    except SpecError as exc:  # unreadable, or not UTF-8 (the message names the byte offset)
        raise ValueError(f"objective {value!r}: {exc}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes
        raise ValueError(f"objective {value!r}: {path} is not valid Python: {exc}") from None
    found = [node for node in tree.body
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name]
    if not found:
        raise ValueError(f"objective {value!r}: {path} defines no top-level function {name!r}")
    args = found[-1].args
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    params = [("positional", i >= first_default, False) for i in range(len(positional))]
    params += [("keyword", d is not None, False) for d in args.kw_defaults]
    if args.vararg is not None:
        params.append(("var", True, True))
    _check_arity(params, f"objective {value!r}")
    return f"{path.resolve()}:{name}"


def _check_callable(fn: Any, where: str) -> None:
    if not callable(fn):
        raise ValueError(f"{where} is not a function")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: it is called and its errors are trial failures
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional",
             inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.KEYWORD_ONLY: "keyword", inspect.Parameter.VAR_POSITIONAL: "var",
             inspect.Parameter.VAR_KEYWORD: "varkw"}
    _check_arity([(kinds[p.kind], p.default is not inspect.Parameter.empty, False)
                  for p in sig.parameters.values()], where)


def check_objective(value: str) -> str:
    """The spec's objective, validated (ValueError for pydantic, naming what is valid).

    A file reference is returned with its path made absolute, so workers find the same file.
    """
    if value in BUILTIN_OBJECTIVES:
        return value
    file_ref = _split_file_ref(value)
    if file_ref is not None:
        return _check_file_function(*file_ref, value)
    registered = registered_objectives()
    if value in registered:
        try:
            fn = registered[value].load()
        except Exception as exc:  # the package's own import failed: tell which, in one line
            raise ValueError(f"objective {value!r}: entry point {registered[value].value!r} "
                             f"cannot be loaded: {type(exc).__name__}: {exc}") from None
        _check_callable(fn, f"objective {value!r} ({registered[value].value})")
        return value
    if ":" in value:
        raise ValueError(f"objective {value!r}: an importable 'module:function' is refused (a spec "
                         f"is data, never code); {_valid_names()}")
    raise ValueError(f"objective {value!r} is unknown; {_valid_names()}")


def load_user_objective(value: str) -> Callable[..., Any]:
    """The function a validated user objective names (on a worker); WorkerError if it is gone."""
    file_ref = _split_file_ref(value)
    if file_ref is not None:
        path, name = file_ref
        module_name = f"mpsearch_user_objective_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise WorkerError(f"objective {value!r}: no such file on this worker")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise WorkerError(f"objective {value!r} cannot be loaded: {type(exc).__name__}: "
                              f"{exc}") from None
        fn = getattr(module, name, None)
    else:
        registered = registered_objectives()
        if value not in registered:
            raise WorkerError(f"objective {value!r} is not registered on this worker (install the "
                              f"package that provides entry point group {ENTRY_POINT_GROUP!r})")
        try:
            fn = registered[value].load()
        except Exception as exc:
            raise WorkerError(f"objective {value!r} cannot be loaded: {type(exc).__name__}: "
                              f"{exc}") from None
    if not callable(fn):
        raise WorkerError(f"objective {value!r} is not a function")
    return fn
