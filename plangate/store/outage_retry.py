"""Recording what already happened once the database answers again, rather than dropping it.

A write tool's result exists only in the executor's memory until its transaction commits. If
the database restarts just then, failing the handler (as any outage does, to be retried)
dropped the result: the retried message found the step claimed by this very executor, waited
out the claim's lease (five minutes by default), then called the write again, or asked a
person whether it had happened. Where a result is in hand, its transaction is tried again
until the database answers, within the claim's lease; after that the claim is anyone's, and the
outage is the handler's to wait out as before. stamina paces the tries (backoff with jitter);
its own line at each try is not logged (`plangate.retry_lines`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import stamina

from plangate.store.engine import Store, failure_cause, is_outage
from plangate.store.outages import store_answered, store_failed

log = logging.getLogger(__name__)

T = TypeVar("T")


def riding_out_outages(
    store: Store, write: Callable[[], T], *, within: float | None, what: str
) -> T:
    """Return `write()` on `store`, tried again while it is unreachable, for `within` seconds.

    `write` must be whole or nothing each time: one transaction, its in-memory effects undone
    if it fails. Any other error, or an outage outlasting `within`, is raised. The outage is
    said as the process's one (`store_failed`), not at each try; what waits for it in a line
    when it is first met, and when recorded or given up. `within` None: nothing is in hand
    (`write` fails as any handler's work does, to be retried whole).
    """
    if within is None:
        return write()
    started = time.monotonic()
    deadline = started + within
    failed: list[Exception] = []

    def outage(error: BaseException) -> bool:
        if not isinstance(error, Exception) or not is_outage(error):
            return False
        if time.monotonic() >= deadline:
            return False
        store_failed(store, error, f"the recording of {what}")
        if not failed:
            log.info(
                "the store does not answer: recording %s again once it answers (for up to %.0f s)",
                what,
                deadline - time.monotonic(),
            )
        failed.append(error)
        return True

    try:
        if within <= 0:
            return write()
        for attempt in stamina.retry_context(
            on=outage, attempts=None, timeout=within, wait_initial=0.25, wait_max=5.0
        ):
            with attempt:
                result = write()
                if failed:
                    store_answered(store)
                    took = time.monotonic() - started
                    log.info("%s recorded after %.1f s", what, took)
                return result
    except Exception as error:
        if is_outage(error):
            waited = f"within {within:.0f} s" if within > 0 else "before the claim's lease ran out"
            log.error(
                "the database did not answer %s (%s): %s is not recorded; its claim runs out "
                "and the step is settled as after an executor's death (`plangate status` "
                "shows it)",
                waited,
                failure_cause(error),
                what,
            )
        raise
    raise AssertionError("stamina ends by returning or raising")  # pragma: no cover
