"""How far a long command got, said on stderr: a bar on a terminal, a line now and then elsewhere.

`audit verify` over a year of goals reads tens of millions of entries, for half an hour, and
said nothing until the end: an operator could not tell a slow check from a stuck one. Nothing
is said of work that ends within `QUIET_FOR` seconds, so short runs and tests stay as they were.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

T = TypeVar("T")

QUIET_FOR = 2.0  # seconds of work before anything is said
EVERY = 10.0  # seconds between two lines where stderr is no terminal (a log, a cron mail)


class Progress:
    """Report `done` of `total` units of one piece of work as it goes (`progress(done, total)`).

    Given `enabled=False` (e.g. `--json`, read by a monitor) it says nothing.
    """

    def __init__(self, console: Console, what: str, unit: str, *, enabled: bool = True) -> None:
        self._console, self._what, self._unit, self._enabled = console, what, unit, enabled
        self._started = time.monotonic()
        self._said_at: float | None = None
        self._bar: Bar | None = None
        self._task = TaskID(0)

    def __call__(self, done: int, total: int | None = None) -> None:
        """Take note that `done` units (of `total`, if known) are done; say so if it is time."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._started < QUIET_FOR:
            return
        if self._console.is_terminal:
            self._show_bar(done, total)
        elif self._said_at is None or now - self._said_at >= EVERY:
            self._said_at = now
            self._console.print(self._line(done, total, now - self._started), highlight=False)

    def _show_bar(self, done: int, total: int | None) -> None:
        if self._bar is None:
            columns = (TextColumn(f"{self._what}"), BarColumn(), MofNCompleteColumn())
            more = (TextColumn(self._unit), TimeElapsedColumn())
            self._bar = Bar(*columns, *more, console=self._console, transient=True)
            self._task = self._bar.add_task(self._what, total=total)
            self._bar.start()
        self._bar.update(self._task, completed=done, total=total)

    def _line(self, done: int, total: int | None, elapsed: float) -> str:
        if not total:
            return f"{self._what}: {done:,} {self._unit}, {elapsed:.0f} s"
        share = f"{100 * done // total} %"
        return f"{self._what}: {done:,} of {total:,} {self._unit} ({share}), {elapsed:.0f} s"

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()  # transient: the bar is gone, the result is said after it


def counted(items: Iterable[T], progress: Progress) -> Iterator[T]:
    """Yield `items`, telling `progress` how many went by (their total is not known)."""
    for done, item in enumerate(items, start=1):
        progress(done)
        yield item
