"""A handler's deadline: one running past it is reported and its message handed back.

Python cannot stop the thread; the copy goes back through the stage's retry key (the next
attempt, to any worker) and the original is acked, so the message is not held here for as
long as the handler hangs. Handlers are idempotent: if it ends after all, what it did stands
and the copy finds it done.
"""

from __future__ import annotations

import logging
import time

from plangate.bus.envelope import GOAL_HEADER
from plangate.bus.in_flight import InFlight
from plangate.bus.settlement import Settlement

log = logging.getLogger(__name__)


class HandlerDeadline:
    """Watches a loop's handlers, once a second, for those past `seconds` (None: no deadline)."""

    def __init__(self, seconds: float | None, max_attempts: int) -> None:
        self._seconds = seconds
        self._max_attempts = max_attempts
        self._last_watch = time.monotonic()

    def hand_back_overdue(self, in_flight: InFlight, settlement: Settlement) -> None:
        """Report each handler past the deadline, and hand its message back to the stage.

        One hung that many times is dead-lettered instead.
        """
        now = time.monotonic()
        if self._seconds is None or now - self._last_watch < 1.0:
            return
        self._last_watch = now
        for running, ran in in_flight.overdue(self._seconds):
            delivery = running.delivery
            log.error(
                "a handler of %s (goal %s) is still running after %.0f s, past its %g s "
                "deadline; handing its message back to the stage",
                delivery.routing_key,
                delivery.headers.get(GOAL_HEADER, "?"),
                ran,
                self._seconds,
            )
            if delivery.attempt >= self._max_attempts:
                reason = f"its handler hung past the {self._seconds:g} s deadline"
                reason = f"{reason} {delivery.attempt} times"
                settlement.dead_letter(running.raw, delivery, reason)
            else:
                copy = settlement.next_attempt(delivery, running.body)
                settlement.publish_then_ack(running.raw, [copy])
