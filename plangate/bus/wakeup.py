"""Waking a consume loop out of kombu's wait when one of its handlers finishes.

kombu has no way to interrupt `drain_events` from another thread, so a loop with handlers
running had to come out every millisecond or two to see whether one had finished (to ack it
and take the next message): on a busy worker that polling took 13 % of a core. kombu's Redis
transport waits in one epoll over its sockets; a pipe registered in that poller lets a handler
thread end the wait at once. plangate's memory transport waits on a condition that
`memory_transport.wake` signals. AMQP offers no such poller, and its loops keep polling:
`available` says which.

This reaches into kombu's Redis transport (`Transport.cycle`, a `MultiChannelPoller`, and its
`poller` and `handle_event`); `tests/test_wakeup.py` pins the behaviour it relies on.
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

from kombu.connection import Connection
from kombu.transport.redis import MultiChannelPoller
from kombu.utils.eventio import READ

from plangate.bus import memory_transport


class Wakeup:
    """A pipe that makes the Redis transport's `drain_events` return when written to."""

    def __init__(self, connection: Connection) -> None:
        self._pipe: tuple[int, int] | None = None
        self._memory = connection.transport
        if not isinstance(self._memory, memory_transport.Transport):
            self._memory = None
        cycle = getattr(connection.transport, "cycle", None)
        if not isinstance(cycle, MultiChannelPoller):
            return
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._cycle = cycle
        kombu_handle_event = cycle.handle_event

        def handle_event(fileno: int, event: int) -> Any:
            if fileno != read:
                return kombu_handle_event(fileno, event)
            self._empty()
            return True  # kombu's `get` returns on a true result, and `drain_events` with it

        cycle.handle_event = handle_event  # type: ignore[method-assign]
        cycle.poller.register(read, READ)

    @property
    def available(self) -> bool:
        """True when `set` ends a wait in `drain_events`; otherwise the loop must poll."""
        return self._pipe is not None or self._memory is not None

    def set(self) -> None:
        """Wake the loop (from any thread); a wake-up already pending is enough."""
        if self._memory is not None:
            memory_transport.wake(self._memory)
            return
        pipe = self._pipe  # one read: `close` may clear it meanwhile
        if pipe is not None:
            with suppress(BlockingIOError):  # the pipe is full: the loop is woken already
                os.write(pipe[1], b"\0")

    def _empty(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            with suppress(BlockingIOError):
                while os.read(pipe[0], 4096):
                    pass

    def close(self) -> None:
        """Take the pipe out of kombu's poller and close it."""
        if self._pipe is None:
            return
        read, write = self._pipe
        self._pipe = None
        with suppress(KeyError, ValueError, OSError):
            self._cycle.poller.unregister(read)
        vars(self._cycle).pop("handle_event", None)  # kombu's own method again
        os.close(read)
        os.close(write)
