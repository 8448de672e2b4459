"""The ``mpsearch`` command line (typer + rich): the CLI's own wing of ``cluster``.

Commands are plain functions in the modules of this package, registered here. Errors a user can cause
(``MpsearchError``) are printed as one line on stderr with exit code 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.text import Text

from mpsearch.spaces.errors import MpsearchError

from . import cluster as cli_cluster
from . import optuna as cli_optuna
from . import profile as cli_profile
from . import results as cli_results
from . import run as cli_run
from .output import err

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Search per-layer mixed-precision configurations of neural networks.")
app.command()(cli_run.run)
app.command()(cli_results.best)
app.command()(cli_results.trials)
app.command()(cli_profile.profile)
app.command()(cli_cluster.submit)
app.command()(cli_cluster.status)
app.command()(cli_cluster.resume)
app.command()(cli_results.pareto)
app.command()(cli_results.compare)
app.command()(cli_results.export)
app.command()(cli_results.apply)
app.command()(cli_results.report)
app.command("import-optuna")(cli_optuna.import_optuna)


def main() -> None:
    """Console entry point: one line on stderr and exit 1 for any error a user can cause."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except MpsearchError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted: trials recorded so far are kept in the store")
        sys.exit(130)

