"""Search strategies behind one ask/tell interface, and the loop that drives them.

Importing this package loads neither torch, Ray nor a database driver.
"""

from .base import Evaluation, Searcher, SearcherParams
from .evolutionary import EvolutionarySearcher
from .loop import Executor, LoopStats, Outcome, Recorder, SerialExecutor, run_search
from .random_search import RandomSearcher
from .registry import SEARCHERS, SearcherConfig, make_searcher, searcher_class
from .sequential import SequentialSearcher
from .uniform import UniformSearcher

__all__ = [
    "SEARCHERS",
    "Evaluation",
    "EvolutionarySearcher",
    "Executor",
    "LoopStats",
    "Outcome",
    "RandomSearcher",
    "Recorder",
    "Searcher",
    "SearcherConfig",
    "SearcherParams",
    "SequentialSearcher",
    "SerialExecutor",
    "UniformSearcher",
    "make_searcher",
    "searcher_class",
    "run_search",
]
