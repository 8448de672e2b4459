"""The project's one base error, and the errors raised by the search-space concern.

Every error a user can cause derives from :class:`MpsearchError`; the CLI prints such an error as one
line and exits non-zero. Anything else is a bug and keeps its traceback. Subclasses live with the
concern that raises them (``StoreError`` in storage, ``WorkerError`` in workers, ...).
"""


class MpsearchError(Exception):
    """Base of every error a user can cause (bad spec, missing model, dead database, ...)."""


class SpecError(MpsearchError):
    """The job spec is malformed or names something that does not exist."""


class BudgetError(MpsearchError):
    """The budget cannot be met by any configuration of the space."""
