"""A spec's objective is a registered name, never an importable ``module:function``."""

from __future__ import annotations

import pytest

from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces.errors import SpecError
from mpsearch.workers.objective_registry import ENTRY_POINT_GROUP, load_user_objective


def spec(objective: str):
    return parse_spec({"study": "o", "budget": {"avg_bits": 4}, "objective": objective})


@pytest.mark.parametrize("name", ["os:system", "subprocess:call", "builtins:eval",
                                  "mpsearch.workers.scoring:embedding_distortion"])
def test_importable_module_functions_are_refused(name):
    with pytest.raises(SpecError, match="importable 'module:function' is refused"):
        spec(name)


def test_a_file_objective_is_checked_without_running_the_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "loss.py"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    "def mse(reference, output, batch, scale=1.0):\n"
                    "    return (reference - output) ** 2 * scale\n"
                    "def two(reference, output):\n    return 0.0\n"
                    "def needs_kw(reference, output, batch, *, k):\n    return 0.0\n"
                    "def star(*args):\n    return 0.0\n")
    assert spec(f"{path}:mse").objective == f"{path.resolve()}:mse"
    assert spec(f"{path}:star").objective.endswith(":star")
    assert not marker.exists()  # validated from the syntax tree only
    for name in ("two", "needs_kw"):
        with pytest.raises(SpecError, match="must take three arguments"):
            spec(f"{path}:{name}")
    with pytest.raises(SpecError, match="defines no top-level function 'nope'"):
        spec(f"{path}:nope")
    fn = load_user_objective(f"{path}:mse")  # a worker loads (and so runs) it
    assert marker.exists() and fn(3.0, 1.0, None) == 4.0


def test_a_file_objective_that_is_not_python_or_missing_is_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"def f(a, b, c):\n  return \xff\n")
    with pytest.raises(SpecError, match="not UTF-8 text: byte 0xff at offset 25"):
        spec(f"{bad}:f")
    bad.write_text("def f(a, b, c):\n  return (\n")
    with pytest.raises(SpecError, match="not valid Python"):
        spec(f"{bad}:f")
    with pytest.raises(SpecError, match="cannot read"):
        spec(f"{tmp_path / 'missing.py'}:f")


@pytest.fixture
def installed_objectives(tmp_path, monkeypatch):
    """A package on sys.path registering two objectives in group mpsearch.objectives."""
    (tmp_path / "my_losses.py").write_text(
        "def l1(reference, output, batch):\n    return (reference - output).abs().mean()\n"
        "def one_arg(x):\n    return x\n")
    info = tmp_path / "my_losses-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-losses\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nl1-loss = my_losses:l1\nbad-loss = my_losses:one_arg\n"
        "gone-loss = no_such_module_xyz:f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_entry_point_objective_is_accepted_and_its_signature_checked(installed_objectives):
    assert spec("l1-loss").objective == "l1-loss"
    assert load_user_objective("l1-loss").__name__ == "l1"
    with pytest.raises(SpecError, match="must take three arguments"):
        spec("bad-loss")
    with pytest.raises(SpecError, match="cannot be loaded.*no_such_module_xyz"):
        spec("gone-loss")
    with pytest.raises(SpecError, match="unknown.*l1-loss"):  # the message lists what is there
        spec("l2-loss")
