"""When a failed message is tried again, and how a delayed retry is kept without a slot.

Reject dead-letters at once; Retry says its own delay; anything else waits `retry_delays`; both
count towards `max_attempts`. An outage (Unavailable) is nobody's fault and uses no attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar, runtime_checkable

from plangate.bus.envelope import Envelope
from plangate.errors import NotReady, Reject, Retry, Unavailable

T = TypeVar("T")
RETRY_DELAYS = (0.2, 1.0, 5.0, 30.0)
# Store an envelope to be published `delay` seconds from now; return it tagged with its row.
DeferHook = Callable[[Envelope, float], Envelope]


@runtime_checkable
class Deferring(Protocol):
    """An `on_published` hook that can also store a retry (the store's `SentMarker` can)."""

    def defer(self, envelope: Envelope, delay: float) -> Envelope:
        """Store `envelope` to be published `delay` seconds from now."""


class Deferred(Exception):
    """A retry is stored to be published after `delay`: its message can be acked now."""

    def __init__(self, envelope: Envelope, delay: float) -> None:
        super().__init__(f"stored to be retried in {delay:g} s")
        self.envelope = envelope
        self.delay = delay


def retry_delay(
    error: BaseException, attempt: int, max_attempts: int, delays: Sequence[float]
) -> float | None:
    """Return how long until a failed message is tried again; None: dead-letter it."""
    if isinstance(error, Unavailable):  # an outage is nobody's fault: no attempt is used
        return min(30.0, error.delay * 2.0 ** min(attempt, 5))
    if isinstance(error, Reject) or attempt >= max_attempts:
        return None
    if isinstance(error, Retry):  # an expected outcome: the handler says when to come back
        return error.delay
    return delays[min(attempt, len(delays)) - 1]


def uses_an_attempt(error: BaseException) -> bool:
    """Return whether a failure counts towards `max_attempts` (an outage does not)."""
    return not isinstance(error, Unavailable)


def held_in_memory(error: BaseException) -> bool:
    """Return whether a retry is held unacked here rather than stored in the outbox.

    An outage is held: the store is what is likely down, and a message held here is the
    backpressure an outage wants. Anything else is stored, and its slot freed.
    """
    return isinstance(error, Unavailable) and not isinstance(error, NotReady)


class Waiting(Generic[T]):
    """Retries waiting for their time, each kept as it came: `due()` takes out those due."""

    def __init__(self) -> None:
        self._items: list[tuple[float, T]] = []

    def __iter__(self) -> Iterator[T]:
        return (item for _, item in self._items)

    def add(self, delay: float, item: T) -> None:
        """Keep `item` until `delay` seconds from now."""
        self._items.append((time.monotonic() + delay, item))

    def due(self, within: float = 0.0) -> list[T]:
        """Remove and return the items whose time has come, or comes `within` seconds."""
        now = time.monotonic() + within
        ready = [item for at, item in self._items if at <= now]
        self._items = [(at, item) for at, item in self._items if at > now]
        return ready
