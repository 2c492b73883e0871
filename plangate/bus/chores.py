"""What a consume loop owes its connection once a second, however busy its handlers are."""

from __future__ import annotations

import time
from contextlib import suppress

from kombu.connection import Connection


class Chores:
    """AMQP heartbeats and kombu's own housekeeping, each at most once a second."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._last_beat = self._last_chores = time.monotonic()

    def heartbeat(self) -> None:
        """Send and check AMQP heartbeats (kombu leaves that to the connection's owner)."""
        now = time.monotonic()
        if now - self._last_beat >= 1.0:
            self._last_beat = now
            if self._connection.supports_heartbeats and self._connection.heartbeat:
                self._connection.heartbeat_check()

    def housekeeping(self) -> None:
        """Let kombu do its chores once a second, even while every slot is busy.

        Its chores: connection health checks and, when due, its restore sweep of unacked
        messages (throttled: see `unacked_restore_throttle` in bus.py). Long handlers can keep
        every slot busy, and the loop out of kombu's wait, for minutes.
        """
        now = time.monotonic()
        if now - self._last_chores >= 1.0:
            self._last_chores = now
            with suppress(TimeoutError):
                self._connection.drain_events(timeout=0)
