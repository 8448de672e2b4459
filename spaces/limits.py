"""What a job spec's numbers may be: finite, and within what a model and a machine can do.

YAML reads ``1e309`` and ``.inf`` as infinity and ``.nan`` as NaN; neither is a budget, and neither
is JSON, which the store writes the spec as. :func:`non_finite_field` finds the first such number
anywhere in a spec (strategy parameters included), so it is refused before anything is written.
The maxima below are documented in the README's spec table; each is far above any real job and
low enough that a typo (an evaluation count of 10^12) is caught instead of running until killed.
"""

from __future__ import annotations

import math
from typing import Any

MAX_EVALUATIONS = 1_000_000  # completed evaluations a study may ask for
MAX_WORKERS = 4096  # Ray worker actors
MAX_SAMPLES = 1_000_000  # calibration samples (and offset + samples)
MAX_SEQ_LEN = 1_048_576  # tokens per sample; the model's own maximum positions usually bind first
MAX_BITS = 64.0  # bits per weight, budget and unsearched parameters
MAX_LATENCY_ROWS = 65_536  # batch × tokens of a latency budget's forward pass
MAX_SEED = 2**32 - 1  # NumPy's (and so Optuna's samplers') largest seed


def non_finite_field(data: Any, path: str = "") -> str | None:
    """The dotted path of the first infinite or NaN number in ``data``; None if there is none."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "(top level)"
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = non_finite_field(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None
