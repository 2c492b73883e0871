"""A trouble that lasts (a broker or a collector away): when its log lines are due.

Said at every try, an outage of minutes buried the log: a worker's sweep said a lost broker
every 7 s, the trace exporter every failed batch. Said when it begins, then at most every so
often with how long it has lasted, and once when it ends, it reads as the one outage it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

Said = Literal["began", "goes on"]


class Lasting:
    """Notes of one trouble: says when it began, when it is due to be said again, when it ended."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._began: float | None = None
        self._said_at = 0.0

    def note(self, since: float | None = None) -> Said | None:
        """Note the trouble now: "began" if it had not, "goes on" if due to be said again.

        `since`: when, by the clock, the trouble began if it begins now (a read that failed
        after waiting out its timeout began to fail as it was sent), else now.
        """
        now = self._clock()
        if self._began is None:
            self._began = now if since is None else min(since, now)
            self._said_at = now
            return "began"
        if now - self._said_at < self.every:
            return None
        self._said_at = now
        return "goes on"

    @property
    def active(self) -> bool:
        """Return True while the trouble lasts (noted, not ended)."""
        return self._began is not None

    def seconds(self) -> float:
        """Return how long the trouble has lasted (0: there is none)."""
        return 0.0 if self._began is None else self._clock() - self._began

    def end(self) -> float | None:
        """End the trouble; return how long it lasted (None: there was none)."""
        lasted = None if self._began is None else self.seconds()
        self._began = None
        return lasted
