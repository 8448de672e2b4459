"""What can be chosen per layer, and what a choice costs.

Pure values and functions: importing this package loads neither torch nor Ray. The spec
section (pydantic models, :mod:`.spec`) is imported on first use of one of its names, so a command
that only reads stored trials does not build the models.
"""

from typing import TYPE_CHECKING, Any

from .budget import Constraint
from .errors import BudgetError, MpsearchError, SpecError
from .options import QuantOption
from .space import (
    Budget,
    Candidate,
    Cost,
    Gene,
    LayerInfo,
    LayerRule,
    SearchSpace,
    build_space,
)

if TYPE_CHECKING:
    from .spec import BudgetConfig, LayerRuleConfig, SpaceConfig, parse_option

_FROM_SPEC = ("BudgetConfig", "LayerRuleConfig", "SpaceConfig", "parse_option")


def __getattr__(name: str) -> Any:
    if name in _FROM_SPEC:
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Budget",
    "BudgetConfig",
    "BudgetError",
    "Candidate",
    "Constraint",
    "Cost",
    "Gene",
    "LayerInfo",
    "LayerRule",
    "LayerRuleConfig",
    "MpsearchError",
    "QuantOption",
    "SearchSpace",
    "SpaceConfig",
    "SpecError",
    "build_space",
    "parse_option",
]
