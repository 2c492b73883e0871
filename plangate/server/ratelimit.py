"""Counts per client address within a window: too many answer 429.

Two things are counted: failed logins and bad bearer tokens (`failure_limit`), and goals
submitted (`intake_limit`, PLANGATE_INTAKE_GOALS_PER_MINUTE): the intake token is a service's
credential, and one holder of it could otherwise fill the store as fast as serve can write.

The count is kept in this process: each replica of `serve` counts on its own, so behind N
replicas a guesser gets up to N times the limit. With 256-bit tokens (`secrets.token_urlsafe
(32)`) guessing is hopeless at any rate: the tokens' length keeps them safe, not this limit,
which only tells a client past it to stop (429). So a valid token passes even from an address
past the limit: everyone behind one NAT, or behind a proxy not named in
PLANGATE_TRUSTED_PROXIES, shares an address, and ten bad tokens from anyone there locked
every reviewer out for five minutes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import Request

MAX_FAILURES = 10
WINDOW_SECONDS = 300.0
# Past this many addresses, those gone quiet are forgotten (at most every tenth of a window);
# past ten times as many still counting, the longest known are forgotten too: one IPv6 /64
# holds addresses without end, and each held memory for good.
MAX_ADDRESSES = 10_000


class WindowLimit:
    """At most `limit` events per address within `window` seconds; then wait."""

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def retry_after(self, address: str) -> int | None:
        """Return the seconds `address` must wait before trying again, or None if it may."""
        now = self._clock()
        with self._lock:
            if address not in self._failures:  # asking holds no memory for an address
                return None
            return self._wait(self._recent(address, now), now)

    def take(self, address: str) -> int | None:
        """Count one event of `address` if it may have one; else return the seconds to wait.

        One step, so that requests at once from one address cannot all pass a look first.
        """
        now = self._clock()
        with self._lock:
            wait = self._wait(self._recent(address, now), now)
            if wait is None:
                self._counted(address, now)
            return wait

    def count(self, address: str) -> None:
        """Count one event of `address`."""
        now = self._clock()
        with self._lock:
            self._counted(address, now)

    def _wait(self, events: deque[float], now: float) -> int | None:
        if len(events) < self._limit:
            return None
        return max(1, math.ceil(events[0] + self._window - now))

    def _counted(self, address: str, now: float) -> None:
        self._recent(address, now).append(now)
        if len(self._failures) > MAX_ADDRESSES and now >= self._next_sweep:
            self._forget_quiet(now)

    def _forget_quiet(self, now: float) -> None:
        """Forget the addresses with nothing in the window; past 10x the most, the oldest too."""
        for address in list(self._failures):
            if not self._recent(address, now):
                del self._failures[address]
        for address in list(self._failures)[: max(0, len(self._failures) - 10 * MAX_ADDRESSES)]:
            del self._failures[address]  # known the longest: a dict keeps insertion order
        self._next_sweep = now + self._window / 10

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        return failures


def client_address(request: Request) -> str:
    """Return the address a request came from (a proxy's own, unless uvicorn trusts it)."""
    return request.client.host if request.client else "unknown"


def get_limit(request: Request) -> WindowLimit:
    """Return the app's limit of failed logins and bad tokens."""
    limit: WindowLimit = request.app.state.failure_limit
    return limit
