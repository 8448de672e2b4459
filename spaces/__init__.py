"""What can be chosen per layer, and what a choice costs.

Pure values and functions: importing this package loads neither torch nor Ray.
"""

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
from .spec import BudgetConfig, LayerRuleConfig, SpaceConfig, parse_option

__all__ = [
    "Budget",
    "BudgetConfig",
    "BudgetError",
    "Candidate",
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
