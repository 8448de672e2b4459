"""The setup phases of ``mpsearch run`` on the terminal: one progress line per phase, then the
search bar; on a file or a pipe, one line when a phase ends (its count and seconds), no bars."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress, TaskID


class PhaseDisplay:
    """A :class:`~mpsearch.cluster.warmup.SetupListener` drawing into ``progress`` (whose
    columns show ``task.fields["note"]``), or printing plain lines when ``console`` is not a
    terminal. Profile probes (trials of origin ``…:probe``) get a line of their own."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress, self.console = progress, console
        self.live = console.is_terminal
        self.tasks: dict[str, TaskID] = {}
        self.texts: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.done: set[str] = set()

    def phase(self, key: str, text: str, total: int) -> None:
        if key == "search":
            for other in list(self.tasks):
                self.finish(other)
            return
        if key in self.tasks:
            self.progress.update(self.tasks[key], total=total or None)
            return
        if "prepare" in self.tasks:  # the first worker phase ends the preparation
            self.finish("prepare")
        self.texts[key], self.started[key] = text, time.perf_counter()
        # on a file, the phases are plain lines: no bar of theirs in the final render
        self.tasks[key] = self.progress.add_task(text, total=total or None, note="",
                                                 visible=self.live)

    def advance(self, key: str, n: int = 1) -> None:
        if key in self.tasks:
            self.progress.advance(self.tasks[key], n)

    def finish(self, key: str) -> None:
        if key not in self.tasks or key in self.done:
            return
        self.done.add(key)
        task = self.progress.tasks[self.tasks[key]]
        seconds = time.perf_counter() - self.started[key]
        self.progress.update(self.tasks[key], completed=task.total or task.completed,
                             note=f"{seconds:.1f} s")
        if not self.live:  # phases overlap: the time is since the phase was announced
            count = f"{int(task.total or task.completed)}, " if (task.total or
                                                                 task.completed) else ""
            self.console.print(f"{self.texts[key]}: done ({count}{seconds:.1f} s)",
                               highlight=False)

    def probe(self) -> None:
        """One more profile probe was scored."""
        if "probes" not in self.tasks:
            self.phase("probes", "profile probes", 0)
        self.advance("probes")
