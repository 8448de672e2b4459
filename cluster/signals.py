"""SIGINT and SIGTERM stop a run cleanly; a second one stops it at once.

The CLI runs each command inside :func:`handling`. The first signal raises
:class:`StopRequested` (a ``KeyboardInterrupt``: Ray's blocking calls turn exactly that into their
own ``KeyboardInterrupt``, any other exception raised from a handler inside them is lost) in the
main thread; the driver then flushes what it buffered, stops the workers, marks the trials still
in flight as interrupted (failed with that reason: ``resume`` dispatches them again), releases the
study's lease, records what it did (:func:`record_stop`) and re-raises. The CLI prints one line
saying how to resume and exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). A second
signal during that cleanup exits at once with the same code (whatever was in flight stays
``running``, which resume also handles).

``ray.init`` installs handlers of its own (a SIGTERM that exits with a Ray traceback); the
driver's connection step calls :func:`reinstall` afterwards, so ours stay in force.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived (raised by the handler; Ray may re-raise it as a plain
    ``KeyboardInterrupt``, so the signal itself is kept in :class:`StopState`)."""


@dataclass
class StopState:
    """The stop signal received inside :func:`handling`, and what the driver did about it."""

    signum: int | None = None
    study: str | None = None
    store: str | None = None  # the store's URL, password masked
    in_flight: int = 0

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def reason(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "KeyboardInterrupt"

    def message(self) -> str:
        if self.study is None:
            return f"interrupted by {self.reason()}; no search was running"
        return (f"interrupted by {self.reason()}: study {self.study} stopped cleanly, "
                f"{self.in_flight} trials in flight marked interrupted; continue it with: "
                f"mpsearch resume --study {self.study} --db '{self.store}'")


_current: list[StopState] = []  # the state of the innermost handling() block


def _handle(signum: int, _frame: FrameType | None) -> None:
    state = _current[-1] if _current else StopState()
    if state.signum is not None:  # the second signal: no more cleanup
        os.write(2, f"error: {signal.Signals(signum).name} again: exiting at once (resume "
                 "continues the study)\n".encode())
        os._exit(128 + signum)
    state.signum = signum
    raise StopRequested(signal.Signals(signum).name)


def reinstall() -> None:
    """Put our handlers back (after ``ray.init`` replaced them), if :func:`handling` is on."""
    if _current and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _handle)


@contextlib.contextmanager
def handling() -> Iterator[StopState]:
    """Stop signals become :class:`StopRequested` inside the block (main thread only); the
    yielded state says afterwards which signal came and what the driver stopped."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _current.append(state)
    try:
        reinstall()
        yield state
    finally:
        _current.remove(state)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_reason() -> str:
    """Why the run stopped, for the interrupted trials' error: ``interrupted (SIGTERM)``."""
    return f"interrupted ({_current[-1].reason() if _current else 'KeyboardInterrupt'})"


def record_stop(study: str, store: str, in_flight: int) -> None:
    """The driver stopped ``study`` cleanly; the CLI's line names it (no-op outside handling)."""
    if _current:
        state = _current[-1]
        state.study, state.store, state.in_flight = study, store, in_flight
