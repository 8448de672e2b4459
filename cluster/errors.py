"""Errors of the cluster concern: Ray cannot be reached, or workers cannot start."""

from mpsearch.spaces.errors import MpsearchError


class ClusterError(MpsearchError):
    """Ray cannot be reached or refused the job."""
