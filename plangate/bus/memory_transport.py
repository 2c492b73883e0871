"""kombu's memory transport, woken by a message instead of polling for one.

The embedded mode runs its stages as threads of one process over kombu's memory transport,
whose `drain_events` finds the queues empty and sleeps `polling_interval` before it looks
again: each hop of a goal waited half an interval on average (10 ms intervals: about a third
of an embedded goal's latency), and shorter intervals burn a core while idle. Here every put
moves a generation counter under a condition, and a waiting `drain_events` sleeps on that
condition until the counter moves, its timeout passes, or `wake` is called (a handler
finished: `plangate.bus.wakeup`). The queues are kombu's own (one dict per process), so the
counter is one per process too; a put wakes every waiting loop, and each looks once.
"""

from __future__ import annotations

import threading
from queue import Empty
from typing import Any

from kombu.transport import memory

_changed = threading.Condition()
_generation = 0


def _moved() -> None:
    """Tell every waiting loop that a message was put, so that each looks again."""
    global _generation
    with _changed:
        _generation += 1
        _changed.notify_all()


def wake(transport: Transport) -> None:
    """End this transport's wait in `drain_events`, or its next one if it is not waiting.

    Kept until taken, like a byte in a pipe: a handler that finishes just before its loop
    starts to wait still wakes it.
    """
    with _changed:
        transport.woken = True
        _changed.notify_all()


class Channel(memory.Channel):
    """kombu's memory channel, whose puts wake the waiting loops."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _moved()

    def _put_fanout(
        self, exchange: Any, message: Any, routing_key: Any = None, **kwargs: Any
    ) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _moved()

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
    woken = False

    # kombu's two base classes declare this differently; the virtual transport's is the one run.
    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver a message; with none waiting, wait for a put or a wake, then look again.

        Returns without a message when woken for something else (a handler finished, or a put
        to another loop's queue): the consume loop then sees to what woke it.
        """
        cycle = self.cycle
        assert cycle is not None  # set when the transport is made
        with _changed:
            if self._take_wakeup():
                return
            seen = _generation
        try:
            cycle.get(self._deliver, timeout=timeout)
            return
        except Empty:
            pass
        with _changed:
            moved = _changed.wait_for(lambda: _generation != seen or self.woken, timeout=timeout)
            if not moved:
                raise TimeoutError
            if self._take_wakeup():
                return
        try:
            cycle.get(self._deliver, timeout=timeout)
        except Empty:
            return

    def _take_wakeup(self) -> bool:
        woken, self.woken = self.woken, False
        return woken
