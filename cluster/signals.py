"""SIGINT and SIGTERM stop a run cleanly; a second one stops it at once.

The CLI installs :func:`handling` around a command. The first signal raises
:class:`StopRequested` in the main thread (a ``BaseException``, so every ``finally`` runs and no
``except Exception`` swallows it; not a ``KeyboardInterrupt``, which typer turns into a silent exit);
the driver then flushes what it buffered, stops the workers, marks the trials still in flight as
interrupted (failed with that reason: ``resume`` dispatches them again), releases the study's
lease and re-raises; the CLI prints one line saying how to resume and exits 128 + the signal
(130 for Ctrl-C, 143 for SIGTERM). A second signal during that cleanup exits at once with the
same code (whatever was in flight stays ``running``, which resume also handles).

``ray.init`` installs handlers of its own (a SIGTERM that exits with a Ray traceback); the
driver's connection step calls :func:`reinstall` afterwards, so ours stay in force.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """A stop signal arrived; the driver adds what was left in flight and how to resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.study: str | None = None
        self.store: str | None = None  # the store's URL, password masked
        self.in_flight = 0

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.study is None:
            return f"interrupted by {name}; nothing of a study was running"
        return (f"interrupted by {name}: study {self.study} stopped cleanly, {self.in_flight} "
                f"trials in flight marked interrupted; continue it with: mpsearch resume --study "
                f"{self.study} --db '{self.store}'")


_state: dict[str, Any] = {"active": False, "received": None}


def _handle(signum: int, _frame: FrameType | None) -> None:
    if _state["received"] is not None:  # the second signal: no more cleanup
        os.write(2, f"error: {signal.Signals(signum).name} again: exiting at once (resume "
                 "continues the study)\n".encode())
        os._exit(128 + signum)
    _state["received"] = signum
    raise StopRequested(signum)


def reinstall() -> None:
    """Put our handlers back (after ``ray.init`` replaced them), if :func:`handling` is on."""
    if _state["active"] and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _handle)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Stop signals become :class:`StopRequested` inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _state.update(active=True, received=None)
    try:
        reinstall()
        yield
    finally:
        _state.update(active=False, received=None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_(exc: BaseException, study: str, store: str, in_flight: int) -> None:
    """Attach the study's name, store and trials in flight to a stop, for the CLI's line."""
    if isinstance(exc, StopRequested):
        exc.study, exc.store, exc.in_flight = study, store, in_flight
