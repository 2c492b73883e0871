"""Running a consume loop again after it fails: a broker outage backs off; a recovery resets it.

Only a connection error is an outage. A malformed message never gets here (each transport turns
it into a dead letter); anything else that ends the loop is a fault of ours, logged with its
traceback, and the loop restarts after the same backoff so that a fault that repeats does not
spin.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 30.0


class Backoff:
    """Delays that double from `first` up to `most`, and start over after `reset`."""

    def __init__(self, first: float = FIRST_DELAY, most: float = MAX_DELAY) -> None:
        self._first = first
        self._most = most
        self._next = first

    def next(self) -> float:
        """Return the delay before the next attempt, and double the one after it."""
        delay = self._next
        self._next = min(self._most, delay * 2)
        return delay

    def reset(self) -> None:
        """Start from the first delay again (the broker came back)."""
        self._next = self._first


def refused_by_broker(exc: BaseException) -> bool:
    """Whether the broker refused our connection's settings (a Redis database it lacks, `/99`).

    Redis says so only once connected; to whoever connects, the broker is as unusable as a
    stopped one until PLANGATE_BROKER_URL is fixed: said in one line, not as our fault.
    """
    return "DB index is out of range" in str(exc)


def run_reconnecting(
    run: Callable[[threading.Event], None],
    stop: threading.Event,
    connected: threading.Event,
    outages: tuple[type[BaseException], ...],
    backoff: Backoff,
    name: str,
) -> None:
    """Call `run(stop)` until `stop` is set, waiting out `backoff` between failed runs.

    `connected` is set by `run` once it consumes: a run that got that far recovered from any
    outage before it, so the next failure waits the first delay again, not the last one.
    """
    while not stop.is_set():
        connected.clear()
        try:
            run(stop)
        except Exception as exc:
            if connected.is_set():
                backoff.reset()
            connected.clear()
            delay = backoff.next()
            if isinstance(exc, outages):
                log.warning("%s lost the broker (%s); reconnecting in %g s", name, exc, delay)
            elif refused_by_broker(exc):
                log.error(
                    "%s: the broker refuses its settings (%s); check PLANGATE_BROKER_URL; "
                    "trying again in %g s",
                    name,
                    exc,
                    delay,
                )
            else:
                log.error(
                    "%s failed (not a broker outage); restarting in %g s", name, delay, exc_info=exc
                )
            stop.wait(delay)
