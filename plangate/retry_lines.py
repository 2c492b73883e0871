"""stamina's retries, said in plangate's words or not at all.

stamina logs each retry it schedules itself ("stamina.retry_scheduled", with the exception's
repr): through a database restart, a result in hand was one such line a try, each quoting the
driver's error and naming no setting. A store that does not answer is said by the store's own
outage lines (`plangate.store.outages`); any other retry (an HTTP call's) in one line of ours.
stamina's Prometheus counter (`stamina_retries_total`) is kept.
"""

from __future__ import annotations

import logging

from stamina.instrumentation import PrometheusOnRetryHook, RetryDetails, set_on_retry_hooks

from plangate.redaction import redact
from plangate.store.engine import is_outage

log = logging.getLogger(__name__)


def say_retry(details: RetryDetails) -> None:
    """Say a retry stamina scheduled, unless it waits out a store outage (said as one)."""
    if is_outage(details.caused_by):
        return
    cause = str(details.caused_by) or type(details.caused_by).__name__
    log.warning(
        "trying again in %.1f s (retry %d): %s",
        details.wait_for,
        details.retry_num,
        redact(cause.splitlines()[0][:300]),
    )


def install() -> None:
    """Have stamina's retries said by `say_retry` instead of stamina's own log lines."""
    set_on_retry_hooks([PrometheusOnRetryHook, say_retry])
