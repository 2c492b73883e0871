"""kombu's memory transport, woken by a message instead of polling for one.

The embedded mode runs its stages as threads of one process over kombu's memory transport,
whose `drain_events` finds the queues empty and sleeps `polling_interval` before it looks
again: each hop of a goal waited half an interval on average (10 ms intervals: about a third
of an embedded goal's latency), and shorter intervals burn a core while idle. Here a waiting
`drain_events` sleeps until a message is put onto a queue its connection consumes, its timeout
passes, or `wake` is called (a handler finished: `plangate.bus.wakeup`).

A put wakes only the loops that consume its queue. Waking every loop at each put (as this
transport first did) cost a goal some forty needless wake-ups, each a thread switch and a look
at empty queues: a tenth of an embedded goal's CPU. The queues are kombu's own (one dict per
process), so the waiting loops are listed per process too, under one lock.
"""

from __future__ import annotations

import threading
import weakref
from queue import Empty
from typing import Any

from kombu.transport import memory

_lock = threading.Lock()
# Transports inside `drain_events`, each with the queues its channels consume.
_waiting: weakref.WeakSet[Transport] = weakref.WeakSet()


def _moved(queue: str | None) -> None:
    """Wake the waiting loops that consume `queue` (every waiting loop: None)."""
    with _lock:
        for transport in _waiting:
            if queue is None or queue in transport.consumed:
                transport.moved = True
                transport.changed.notify()


def wake(transport: Transport) -> None:
    """End this transport's wait in `drain_events`, or its next one if it is not waiting.

    Kept until taken, like a byte in a pipe: a handler that finishes just before its loop
    starts to wait still wakes it.
    """
    with _lock:
        transport.woken = True
        transport.changed.notify()


class Channel(memory.Channel):
    """kombu's memory channel, whose puts wake the waiting loops."""

    # The bodies stay in this process: kombu's base64 round trip (for brokers that store
    # text) only spent CPU on every hop.
    body_encoding = ""  # none: kombu encodes only when one is named

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _moved(queue)

    def _put_fanout(
        self, exchange: Any, message: Any, routing_key: Any = None, **kwargs: Any
    ) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _moved(None)

    def queue_delete(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """Delete the queue and its bindings.

        kombu's memory channel drops the queue but leaves its rows in each exchange's routing
        table, so the next message routed there made the queue again and kept a copy forever.
        """
        deleted = super().queue_delete(queue, *args, **kwargs)
        for exchange in self.state.exchanges.values():
            table = exchange.get("table")
            if table:
                table[:] = [row for row in table if row[-1] != queue]
        return deleted


class Transport(memory.Transport):
    """kombu's memory transport, waiting on puts instead of sleeping between polls."""

    Channel = Channel
    woken = False  # `wake` was called, and no `drain_events` has returned for it yet
    moved = False  # a message was put onto a consumed queue since the wait began

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.changed = threading.Condition(_lock)
        self.consumed: frozenset[str] = frozenset()

    # kombu's two base classes declare this differently; the virtual transport's is the one run.
    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver a message; with none waiting, wait for a put or a wake, then look again.

        Returns without a message when woken for something else (a handler finished), or when
        the message that woke it went elsewhere (another consumer of the queue took it, or the
        prefetch is full): the consume loop then sees to what woke it.
        """
        cycle = self.cycle
        assert cycle is not None  # set when the transport is made
        with _lock:
            if self._take_wakeup():
                return
            # Listed before the look: a put between the look and the wait is not missed.
            self.consumed = frozenset(
                queue for channel in self.channels for queue in channel._active_queues
            )
            self.moved = False
            _waiting.add(self)
        try:
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            with _lock:
                if not self.changed.wait_for(lambda: self.moved or self.woken, timeout=timeout):
                    raise TimeoutError
                if self._take_wakeup():
                    return
        finally:
            with _lock:
                _waiting.discard(self)
        try:
            cycle.get(self._deliver, timeout=timeout)
        except Empty:
            return

    def _take_wakeup(self) -> bool:
        woken, self.woken = self.woken, False
        return woken
