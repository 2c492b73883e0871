"""A store that does not answer, said as one outage a process: begun, lasting, ended.

Said by each path that met it, a database restart of 20 s was 10 to 30 lines a process: every
`/readyz` probe, every scrape, every sweep, every outbox mark (with a traceback) and every retry
of a result in hand. Whichever path meets it first says it began (the store, its password
hidden, and the database's words); the others say nothing; whichever finds the store answering
again says how long it lasted.
"""

from __future__ import annotations

import logging
import threading

from plangate.lasting import Lasting
from plangate.store.engine import Store, failure_cause, shown_url
from plangate.store.sqlstates import refusal

log = logging.getLogger(__name__)

SAY_AGAIN_EVERY = 60.0  # seconds: while it lasts, at most this often

# By the store as it is shown: two stores of one process on one database have one outage.
_outages: dict[str, Lasting] = {}
_lock = threading.Lock()


def store_failed(store: Store, error: BaseException, seen_by: str) -> None:
    """Note that `store` did not answer `seen_by` (a readiness check, a scrape); say it if due."""
    where = shown_url(store.engine.url)
    with _lock:
        outage = _outages.setdefault(where, Lasting(SAY_AGAIN_EVERY))
        said = outage.note()
        lasted = outage.seconds()
    refused = refusal(error)
    if said == "began" and refused is not None:  # it answers, but takes no more work now
        log.warning(
            "the store at %s refuses work: %s (%s; seen by %s): not ready, and its work waits "
            "until it is taken; %s",
            where,
            refused.reason,
            failure_cause(error),
            seen_by,
            refused.advice or "it is tried again",
        )
    elif said == "began":
        log.warning(
            "the store at %s does not answer (%s; seen by %s): not ready, and its work waits "
            "until it answers; check the database and PLANGATE_DATABASE_URL",
            where,
            failure_cause(error),
            seen_by,
        )
    elif said == "goes on":
        log.warning(
            "the store at %s still does not answer, for %.0f s now (%s)",
            where,
            lasted,
            failure_cause(error),
        )


def store_answered(store: Store) -> None:
    """Note that `store` answered; say so if it did not before, with how long it did not."""
    if not _outages:  # the usual case, at every probe and scrape: no lock, no URL to show
        return
    where = shown_url(store.engine.url)
    with _lock:
        outage = _outages.pop(where, None)
        lasted = None if outage is None else outage.end()
    if lasted is not None:
        log.warning("the store at %s answers again, after %.0f s", where, lasted)
