"""Ready or not: the one answer every `/readyz` gives (workers' health ports and `serve`).

Ready means this process can do its work now: its store answers with the schema this plangate
needs, and (where it has one) its broker answers. Each reason is one line with no URL, host or
error text in it: probes are often reachable from places the settings are not.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from plangate.bus import Bus
from plangate.errors import BrokerRefused, BrokerUnreadable, PlangateError
from plangate.store import Store
from plangate.store.outages import store_answered, store_failed
from plangate.store.schema import mismatch
from plangate.store.sqlstates import refusal

log = logging.getLogger(__name__)
READY_READ_TIMEOUT_SECONDS = 1.0


def not_ready(store: Store, bus: Bus | None = None) -> str | None:
    """Return why this process is not ready, or None if it is."""
    if store.file_gone:
        return "the database file is no longer at its path"
    try:
        current = store.revision()  # a read: a writer holding the lock must not stall it
    except SQLAlchemyError as exc:
        try:
            # A connection the database dropped (a restart it is back from) is found dead
            # only when used: once more, on a fresh one, before the store is said down.
            if not getattr(exc, "connection_invalidated", False):
                raise
            current = store.revision()
        except SQLAlchemyError as again:
            store_failed(store, again, "the readiness check")  # said once, not at every probe
            refused = refusal(again)  # it answers, but takes no more connections (say)
            return "the store does not answer" if refused is None else refused.reason
    store_answered(store)
    problem = mismatch(current)
    if problem is not None:
        return problem
    return None if bus is None else broker_problem(bus)


def broker_problem(bus: Bus) -> str | None:
    """Return why the broker cannot take this process's messages now, or None if it can."""
    if bus.url.startswith("memory://"):
        return None
    try:
        # One round trip: the broker answers, the queue exists. Bounded well inside a probe's
        # timeout (6 s in deploy/): a broker that stopped answering took 22 s to be said, and
        # the kubelet, its probes timing out, heard no reason (and took serve out of service).
        bus.queue_depth("planner", read_timeout=READY_READ_TIMEOUT_SECONDS)
    except BrokerRefused:
        return "the broker refuses plangate's settings (the worker's log says what to fix)"
    except BrokerUnreadable:
        return BrokerUnreadable.reason
    except (PlangateError, OSError) as exc:
        # Not a warning at each probe: the outage is said once, as it begins, by the loop
        # that consumes (and by serve's relay).
        log.debug("readiness: the broker does not answer (%s)", type(exc).__name__)
        return "the broker does not answer"
    except Exception as exc:
        # Junk on the broker's port (a wrong server, a hostile one) raised the client's
        # protocol errors out of the probe: serve answered 500, a worker dropped the request.
        log.debug("readiness: the broker's answer cannot be read (%s)", type(exc).__name__)
        return BrokerUnreadable.reason
    return None
