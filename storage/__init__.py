"""Where every trial is remembered: SQLAlchemy models, the store API, exports."""

from .config import StorageConfig
from .errors import StoreError, StudyConflictError, StudyNotFoundError, mask_url
from .export import trials_table, write_parquet
from .models import COMPLETE, FAILED, RUNNING
from .queries import Comparison, NoResultError, StudyColumn, pareto_front
from .records import CalibrationRecord
from .store import DEFAULT_URL, StudyRecord, TrialRecord, TrialStore, normalize_url
from .writer import TrialWriter

__all__ = [
    "COMPLETE",
    "CalibrationRecord",
    "Comparison",
    "DEFAULT_URL",
    "FAILED",
    "NoResultError",
    "RUNNING",
    "StorageConfig",
    "StoreError",
    "StudyColumn",
    "StudyConflictError",
    "StudyNotFoundError",
    "StudyRecord",
    "TrialRecord",
    "TrialStore",
    "TrialWriter",
    "mask_url",
    "normalize_url",
    "pareto_front",
    "trials_table",
    "write_parquet",
]
