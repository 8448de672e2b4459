"""The README's two set-up commands are the ones the project runs: CI runs the test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```")[1::2]
    return [b.strip() for b in blocks if "pip install torch==2.13.0" in b]


def test_ci_runs_the_readme_test_command():
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines()
          if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [c for c in _commands() if "pytest" in c]


def test_both_commands_pin_torch_and_the_example_exists():
    run, test = _commands()
    assert "mpsearch run examples/minilm.yaml" in run and "[minilm]" in run
    assert "pytest" in test and "ruff check . && mypy &&" in test  # CI lints and type-checks
    assert (ROOT / "examples/minilm.yaml").is_file()


def test_every_example_spec_is_valid():
    from mpsearch.cluster.spec import load_spec

    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        spec = load_spec(path)
        spec.searcher.check()  # strategy name and parameters


def test_the_quick_start_install_ships_the_postgresql_driver():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("psycopg[binary]") for d in project["dependencies"])
