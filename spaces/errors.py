"""The project's one base error, and the errors raised by the search-space concern.

Every error a user can cause derives from :class:`MpsearchError`; the CLI prints such an error as one
line and exits non-zero. Anything else is a bug and keeps its traceback. Subclasses live with the
concern that raises them (``StoreError`` in storage, ``WorkerError`` in workers, ...).
:func:`validation_message` words a pydantic error of a spec section for a user.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic_core import ErrorDetails


class MpsearchError(Exception):
    """Base of every error a user can cause (bad spec, missing model, dead database, ...)."""


class SpecError(MpsearchError):
    """The job spec is malformed or names something that does not exist."""


class BudgetError(MpsearchError):
    """The budget cannot be met by any configuration of the space."""


def validation_message(error: ErrorDetails, model: type[BaseModel]) -> str:
    """What went wrong in one pydantic ``error`` of ``model``, worded for a user.

    An unknown field says which known field it is closest to ("did you mean 'avg_bits'?");
    a validator's own ``ValueError`` is quoted without pydantic's "Value error, " prefix.
    """
    if error["type"] == "extra_forbidden":
        known = _fields_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
        return "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return error["msg"]


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the (sub)model that ``loc`` leads to inside ``model``; [] if none."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):  # an item of a list: the list's model is already ``current``
            continue
        field = current.model_fields.get(part)
        current = None if field is None else _model_in(field.annotation)
    return [] if current is None else [f.alias or name for name, f in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``X``, ``X | None`` or ``list[X]``."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, Mapping):
        return None  # keyed by user names: the key in ``loc`` is no field
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
