"""Errors of the worker concern: a model or calibration source that cannot be loaded."""

from mpsearch.spaces.errors import MpsearchError


class WorkerError(MpsearchError):
    """A worker cannot do its job: the model or the calibration data cannot be loaded."""


class ModelNotFoundError(WorkerError):
    """The model named in the spec does not exist locally and could not be fetched."""
