"""Recording what already happened once the database answers again, rather than dropping it.

A write tool's result exists only in the executor's memory until its transaction commits. If
the database restarts just then, failing the handler (as any outage does, to be retried)
dropped the result: the retried message found the step claimed by this very executor, waited
out the claim's lease (five minutes by default), then called the write again, or asked a
person whether it had happened. Where a result is in hand, its transaction is tried again
until the database answers, within the claim's lease; after that the claim is anyone's, and the
outage is the handler's to wait out as before. stamina paces the tries (backoff with jitter).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import stamina

from plangate.store.engine import failure_cause, is_outage

log = logging.getLogger(__name__)

T = TypeVar("T")


def riding_out_outages(write: Callable[[], T], *, within: float, what: str) -> T:
    """Return `write()`, tried again while the database is unreachable, for `within` seconds.

    `write` must be whole or nothing each time: one transaction, its in-memory effects undone
    if it fails. Any other error, or an outage outlasting `within`, is raised.
    """
    if within <= 0:
        return write()
    deadline = time.monotonic() + within

    def outage(error: Exception) -> bool:
        if not is_outage(error) or time.monotonic() >= deadline:
            return False
        log.warning(
            "the database is unavailable (%s): recording %s again once it answers",
            failure_cause(error),
            what,
        )
        return True

    for attempt in stamina.retry_context(
        on=outage, attempts=None, timeout=within, wait_initial=0.25, wait_max=5.0
    ):
        with attempt:
            return write()
    raise AssertionError("stamina ends by returning or raising")  # pragma: no cover
