"""What a consume loop has in flight: its handlers' messages, their ages, and how far it got.

The loop thread alone reads and writes this (handlers report through the loop's queue), so it
needs no lock. A handler past its deadline is handed back: the loop settles its message at
once, and the handler's own end, whenever it comes, is then only noted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

from kombu.message import Message as KombuMessage

from plangate.bus.envelope import Delivery, Envelope

HandlerFuture = Future[Sequence[Envelope]]


@dataclass
class Done:
    """A message whose handler ended (its future says how)."""

    raw: KombuMessage
    delivery: Delivery
    future: HandlerFuture


@dataclass
class Running:
    """A message whose handler is running."""

    raw: KombuMessage
    delivery: Delivery
    body: bytes
    started: float


class InFlight:
    """The messages a loop's handlers hold, and the newest message the loop has taken."""

    def __init__(self) -> None:
        self._running: dict[HandlerFuture, Running] = {}
        self._handed_back: set[HandlerFuture] = set()
        # When the newest message taken was made: the reconciler compares goals against the
        # stage's mark to tell a message still queued from one lost.
        self.taken_up_to: datetime | None = None

    @property
    def count(self) -> int:
        """How many messages hold a slot (a handed-back one no longer does)."""
        return len(self._running) - len(self._handed_back)

    def started(self, future: HandlerFuture, running: Running, made: datetime) -> None:
        """Note a handler started on a message made at `made` (as its sender says)."""
        self._running[future] = running
        # A sender's clock is not trusted: a time without a zone is ignored, and one in the
        # future counts as now, so no message can pin the mark ahead.
        if made.tzinfo is not None:
            made = min(made, datetime.now(UTC))
            if self.taken_up_to is None or made > self.taken_up_to:
                self.taken_up_to = made

    def holding(self) -> list[tuple[HandlerFuture, Running]]:
        """Return the handlers that hold a slot: running, and not handed back at a deadline.

        One handed back has had its message acked and its copy sent on already.
        """
        return [(f, r) for f, r in self._running.items() if f not in self._handed_back]

    def ended(self, future: HandlerFuture) -> bool:
        """Note a handler ended; return False if its message was already handed back."""
        self._running.pop(future, None)
        if future in self._handed_back:
            self._handed_back.discard(future)
            return False
        return True

    def overdue(self, deadline: float) -> list[tuple[Running, float]]:
        """Return (and count as handed back) the messages whose handlers passed `deadline` s.

        Each comes with how long its handler has run.
        """
        now = time.monotonic()
        late = [
            (future, running)
            for future, running in self._running.items()
            if future not in self._handed_back and now - running.started >= deadline
        ]
        self._handed_back.update(future for future, _ in late)
        return [(running, now - running.started) for _, running in late]
