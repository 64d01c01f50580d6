"""Progress over a whole study: runs done / running / failed and the time left.

On a terminal: one rich progress bar that fits the terminal's width (80 columns included), with
a line above it for every run that diverged, failed or raised. Elsewhere (a pipe, a log file,
a Slurm output file): plain lines, one per finished run, that grep and tail read well, wrapped
between words at the output's width (a long cell name goes on an indented second line):

    [  5/24] completed  4.2 s  seed 1  depth=1,arm=base,width=8
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from biasbench.study.manifest import COMPLETED, DIVERGED, INTERRUPTED
from biasbench.termtable import wrap


class StudyProgress:
    def __init__(self, console: Console, title: str, total: int, done_before: int, failed_before: int = 0):
        self.console, self.total = console, total
        self.done, self.failed, self.running = done_before, failed_before, 0
        self.plain = not console.is_terminal
        self._progress: Progress | None = None
        self._title = title if len(title) <= 16 else title[:15] + "…"
        self._started: dict[str, float] = {}

    def __enter__(self) -> StudyProgress:
        if not self.plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
                TextColumn("{task.completed}/{task.total} done · {task.fields[running]} running · "
                           "{task.fields[failed]} failed ·"),
                TimeRemainingColumn(), console=self.console, speed_estimate_period=600.0)
            self._progress.start()
            self._task = self._progress.add_task(self._title, total=self.total, completed=self.done,
                                                 running=0, failed=self.failed)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, running=self.running, failed=self.failed)

    def note(self, text: str) -> None:
        """A line for the user: above the bar on a terminal, a plain line elsewhere."""
        if self.plain:  # the width of a CI log, wrapped between words: grep finds status and cell
            for line in wrap(text, self.console.width, rest="    "):
                self.console.print(line, soft_wrap=True, highlight=False, markup=False)
        else:
            self.console.print(text, overflow="ellipsis", no_wrap=True, highlight=False, markup=False)

    def started(self, task: Any) -> None:
        self.running += 1
        self._started[task.key] = time.monotonic()
        self._refresh()

    def finished(self, task: Any, status: str, doc: dict[str, Any] | None, *, failed: bool = False,
                 error: str | None = None) -> None:
        self.running = max(0, self.running - 1)
        seconds = time.monotonic() - self._started.pop(task.key, time.monotonic())
        if status in (COMPLETED, DIVERGED):
            self.done += 1
        if status == DIVERGED or failed or error is not None and status != INTERRUPTED:
            self.failed += 1
        self._refresh()
        word = "failed" if failed else status
        line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {word:<11} {seconds:6.1f} s  seed {task.seed}  " \
               f"{task.cell}"
        if error:
            line += f": {error}"
        if self.plain or word != COMPLETED:
            self.note(line)
