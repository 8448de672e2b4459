"""The ``mpsearch`` command line (typer + rich): the CLI's own wing of ``cluster``.

Commands are plain functions in the modules of this package, registered here. Errors a user can cause
(``MpsearchError``) are printed as one line on stderr with exit code 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.text import Text

from mpsearch.spaces.errors import MpsearchError

from .. import signals
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
    _show_warnings()
    try:
        with signals.handling():  # SIGINT/SIGTERM: a clean stop (see cluster/signals.py)
            app()
    except MpsearchError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(1)
    except signals.StopRequested as stop:
        err.print(stop.message(), soft_wrap=True, highlight=False)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: trials recorded so far are kept in the store")
        sys.exit(130)


class _LineHandler(logging.Handler):
    """mpsearch's own warnings (a worker died, the database is away), one line each, printed
    through the CLI's console so they appear above a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"warning: {record.getMessage()}", soft_wrap=True, highlight=False)


def _show_warnings() -> None:
    logger = logging.getLogger("mpsearch")
    if not any(isinstance(h, _LineHandler) for h in logger.handlers):
        logger.addHandler(_LineHandler(logging.WARNING))
        logger.propagate = False

