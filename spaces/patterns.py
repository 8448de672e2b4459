"""User-supplied regular expressions (``space.layers[].match``, ``space.tie``) under a time limit.

A spec is data, and a careless or hostile pattern such as ``^([\\w.]|[\\w.]{2})+(?<!j)$`` backtracks
exponentially in the length of a layer name. Patterns are compiled with the
``regex`` package (the syntax of :mod:`re`) and every match runs with its ``timeout``: the time a
pattern may spend over all the layer names of a model is :data:`MATCH_SECONDS` (the engine checks
its clock coarsely: a refusal can take a few times that); past it the spec is refused, naming the
field and the pattern.
"""

from __future__ import annotations

import time

import regex

from .errors import SpecError

# Time one pattern may spend matching every layer name of a model. Ordinary patterns take
# microseconds per name, so even a model of 10,000 layers stays far below it.
MATCH_SECONDS = 1.0


class TimedPattern:
    """A compiled user pattern whose searches share one time budget of ``seconds``."""

    def __init__(self, pattern: str, where: str, seconds: float = MATCH_SECONDS) -> None:
        self.pattern, self.where, self.seconds = pattern, where, seconds
        try:
            self.compiled = regex.compile(pattern)
        except (regex.error, ValueError, OverflowError, RecursionError) as exc:
            raise SpecError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None
        self._spent = 0.0

    def search(self, name: str) -> regex.Match[str] | None:
        """``re.search`` of the pattern in ``name``; SpecError once the budget is spent."""
        left = self.seconds - self._spent
        start = time.perf_counter()
        try:
            if left <= 0:
                raise TimeoutError
            return self.compiled.search(name, timeout=left)
        except TimeoutError:
            raise SpecError(
                f"{self.where}: regular expression {self.pattern!r} took more than "
                f"{self.seconds:g} s matching layer names (catastrophic backtracking, e.g. a "
                "nested repetition such as (a+)+); simplify it") from None
        finally:
            self._spent += time.perf_counter() - start
