"""What a consume loop owes its connection once a second, however busy its handlers are."""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

from kombu.connection import Connection

from plangate.bus import redis_claims


class Chores:
    """AMQP heartbeats, kombu's own housekeeping and the Redis claims, each when it is due."""

    def __init__(self, connection: Connection, channel: Any = None) -> None:
        self._connection = connection
        self._last_beat = self._last_chores = self._last_claims = time.monotonic()
        self._claims = channel if channel is not None and redis_claims.is_redis(channel) else None
        timeout = float(getattr(channel, "visibility_timeout", 0) or 0)
        self._claims_every = timeout / redis_claims.RENEWALS_PER_TIMEOUT

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

    def keep_claims(self) -> None:
        """Renew the messages this loop holds on Redis, and restore those a dead worker held.

        Several times per redelivery timeout (`plangate.bus.redis_claims`); nothing elsewhere.
        """
        now = time.monotonic()
        if self._claims is not None and now - self._last_claims >= self._claims_every:
            self._last_claims = now
            redis_claims.renew(self._claims)
            redis_claims.restore_abandoned(self._claims)
