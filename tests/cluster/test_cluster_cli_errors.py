"""Bad input to status/resume: one line on stderr, exit 1, the database URL's password masked."""

import os
import subprocess
import sys

import yaml

from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces import LayerInfo, LayerRule, build_space, parse_option
from mpsearch.storage import TrialStore

FIELDS = {"study": "stored", "budget": {"avg_bits": 4.25}}


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MPSEARCH_DB")}
    return subprocess.run([sys.executable, "-m", "mpsearch.cluster.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_error(res, *parts):
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    for part in parts:
        assert part in res.stderr, res.stderr


def test_status_resume_bad_input(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    spec = parse_spec(FIELDS)
    space = build_space([LayerInfo("blocks.0.fc", 128, 128)],
                        [LayerRule("blocks", (parse_option("int4-g128-asym"),))])
    TrialStore(url).open_study("stored", spec.model_dump(mode="json"), spec.identity(), space,
                               "m", "embedding_distortion", 10)

    one_line_error(cli("status", "--study", "nope", "--db", url), "no study 'nope'", "stored")
    one_line_error(cli("resume", "--study", "nope", "--db", url), "no study 'nope'")
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**FIELDS, "budget": {"avg_bits": 3.0}}))
    one_line_error(cli("resume", "--study", "stored", "--db", url, "--spec", str(changed)),
                   "differs from the spec", "budget")
    ok = cli("status", "--db", url, "--json")
    assert ok.returncode == 0 and '"study": "stored"' in ok.stdout

    secret = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/none"
    res = cli("status", "--db", secret)
    one_line_error(res, "***")
    assert "hunter2" not in res.stderr


# Runs the CLI as an install without psycopg would (an import of it fails).
_WITHOUT_PSYCOPG = ("import sys; sys.modules['psycopg'] = None; "
                    "from mpsearch.cluster.cli import main; sys.argv[0] = 'mpsearch'; main()")


def test_a_database_driver_that_is_not_installed_is_one_line_naming_the_package():
    url = "postgresql+psycopg://me:sekret@127.0.0.1:5432/none"
    res = subprocess.run([sys.executable, "-c", _WITHOUT_PSYCOPG, "status", "--db", url],
                         capture_output=True, text=True, timeout=120)
    one_line_error(res, "postgresql+psycopg://me:***@127.0.0.1:5432/none",
                   "driver 'psycopg' is not installed", "pip install 'psycopg[binary]'")
    assert "sekret" not in res.stderr
    one_line_error(cli("best", "--study", "s", "--db", "postgresql+pg8000://me@127.0.0.1/none"),
                   "driver 'pg8000' is not installed", "pip install 'pg8000'")
