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
from . import levels as cli_levels
from . import optuna as cli_optuna
from . import profile as cli_profile
from . import results as cli_results
from . import run as cli_run
from .output import err

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Search per-layer mixed-precision configurations of neural networks.")
app.command()(cli_run.run)
app.command()(cli_levels.levels)
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
        with signals.handling() as stop:  # SIGINT/SIGTERM: a clean stop (cluster/signals.py)
            try:
                code = app(standalone_mode=False)  # usage errors come here, to be one line too
            except KeyboardInterrupt:
                code = 130
            if stop.signum is not None or code == 130:  # typer returns 130 for an interrupt
                err.print(stop.message(), soft_wrap=True, highlight=False)
                sys.exit(stop.exit_code)
    except typer.TyperException as exc:  # typer's own click: usage errors, bad option values
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `mpsearch` alone: the help
            sys.exit(2)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(Text.assemble(("error: ", "bold red"), one_line(" ".join(text.split())), hint),
                  soft_wrap=True, highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        err.print("error: aborted")
        sys.exit(1)
    except MpsearchError as exc:
        err.print(Text.assemble(("error: ", "bold red"), one_line(str(exc))), soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def one_line(text: str) -> str:
    """``text`` with every character that would break or garble the line (newlines, control
    and separator characters from a hostile input) written as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _LineHandler(logging.Handler):
    """mpsearch's own warnings (a worker died, the database is away), one line each, printed
    through the CLI's console so they appear above a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"warning: {record.getMessage()}", soft_wrap=True, highlight=False)


def _show_warnings() -> None:
    logger = logging.getLogger("mpsearch")
    if not any(isinstance(h, _LineHandler) for h in logger.handlers):
        logger.addHandler(_LineHandler(logging.WARNING))

