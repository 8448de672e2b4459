"""Search strategies behind one ask/tell interface, and the loop that drives them.

Importing this package loads neither torch, Ray nor a database driver.
"""

from .base import Evaluation, Needs, SearchContext, Searcher, SearcherParams
from .dynamic_program import dp_frontier, solve_dp
from .evolutionary import EvolutionarySearcher
from .frontier import FrontierSearcher
from .hybrid import HybridSearcher
from .integer_program import Knapsack, Solution, lagrangian_greedy, pareto_sweep, solve, solve_milp
from .ip_searcher import IntegerProgramSearcher
from .loop import Executor, LoopStats, Outcome, Recorder, SerialExecutor, run_search
from .optuna_search import OptunaSearcher
from .population import PopulationEvolutionarySearcher
from .profiling import ProfileMeasurer, normalize_profile
from .random_search import RandomSearcher
from .registry import SEARCHERS, SearcherConfig, make_searcher, searcher_class, searcher_needs
from .sequential import SequentialSearcher
from .uniform import UniformSearcher

__all__ = [
    "SEARCHERS",
    "Evaluation",
    "EvolutionarySearcher",
    "Executor",
    "FrontierSearcher",
    "HybridSearcher",
    "IntegerProgramSearcher",
    "Knapsack",
    "LoopStats",
    "Needs",
    "OptunaSearcher",
    "Outcome",
    "PopulationEvolutionarySearcher",
    "ProfileMeasurer",
    "RandomSearcher",
    "Recorder",
    "SearchContext",
    "Searcher",
    "SearcherConfig",
    "SearcherParams",
    "SequentialSearcher",
    "SerialExecutor",
    "Solution",
    "UniformSearcher",
    "dp_frontier",
    "lagrangian_greedy",
    "make_searcher",
    "normalize_profile",
    "pareto_sweep",
    "run_search",
    "searcher_class",
    "searcher_needs",
    "solve",
    "solve_dp",
    "solve_milp",
]
