"""Where every trial is remembered: SQLAlchemy models, the store API, exports."""

from .errors import StoreError, StudyConflictError, StudyNotFoundError, mask_url
from .export import trials_table, write_parquet
from .models import COMPLETE, FAILED, RUNNING
from .store import DEFAULT_URL, StudyRecord, TrialRecord, TrialStore, normalize_url

# Shorter name used in the docs: ``from mpsearch.storage import Store``.
Store = TrialStore

__all__ = [
    "COMPLETE",
    "DEFAULT_URL",
    "FAILED",
    "RUNNING",
    "Store",
    "StoreError",
    "StudyConflictError",
    "StudyNotFoundError",
    "StudyRecord",
    "TrialRecord",
    "TrialStore",
    "mask_url",
    "normalize_url",
    "trials_table",
    "write_parquet",
]
