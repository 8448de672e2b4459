"""Where every trial is remembered: SQLAlchemy models, the store API, exports."""

from .config import StorageConfig
from .errors import StoreError, StudyConflictError, StudyNotFoundError, mask_url
from .export import trials_table, write_parquet
from .models import COMPLETE, FAILED, RUNNING
from .queries import Comparison, NoResultError, ResultStore, StudyColumn, pareto_front
from .store import DEFAULT_URL, StudyRecord, TrialRecord, TrialStore, normalize_url

# Shorter name used in the docs: ``from mpsearch.storage import Store``; the writer's API plus the
# read-side queries (best, trial, pareto, compare).
Store = ResultStore

__all__ = [
    "COMPLETE",
    "Comparison",
    "DEFAULT_URL",
    "FAILED",
    "NoResultError",
    "RUNNING",
    "ResultStore",
    "Store",
    "StorageConfig",
    "StoreError",
    "StudyColumn",
    "StudyConflictError",
    "StudyNotFoundError",
    "StudyRecord",
    "TrialRecord",
    "TrialStore",
    "mask_url",
    "normalize_url",
    "pareto_front",
    "trials_table",
    "write_parquet",
]
