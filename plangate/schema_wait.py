"""Waiting at start for the migration: a worker or `serve` started before `plangate db upgrade`.

On Kubernetes the migration Job and the Deployments are applied together, and nothing orders
them: a worker or `serve` that found the schema behind exited 2 at once, its restarts backed off
(CrashLoopBackOff, up to 5 minutes), and it came back minutes after the Job had finished. With
`--wait-for-schema SECONDS` it waits instead, alive and not ready. Only for a schema behind this
plangate's (an empty database, an older revision): one a newer plangate migrated will never
come back to this one's, and is refused at once, as without the option.
"""

from __future__ import annotations

import logging
import time

from plangate.bus.reconnect import Backoff
from plangate.errors import ConfigError, SchemaBehind
from plangate.redaction import redact
from plangate.store.engine import is_outage
from plangate.store.schema import head_revision

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # between two reads of the schema's revision while waiting
MIGRATION_JOB = "plangate-db-upgrade"  # deploy/kubernetes/migrate-job.yaml's


class SchemaWait:
    """How long a starting process may wait for the migration, and what it says meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reason: str | None = None  # what /readyz answers while waiting
        self._began: float | None = None

    def retry_after(self, error: ConfigError) -> float | None:
        """Return the seconds until the store is opened again; None: `error` is not waited out.

        Raise ConfigError once the time is up, saying what did not run.
        """
        if not isinstance(error, SchemaBehind) or self.seconds <= 0:
            return None
        now = time.monotonic()
        if self._began is None:
            self._began = now
            log.warning(
                "%s; waiting up to %g s (--wait-for-schema) for it to run (on Kubernetes, "
                "the %s Job runs it)",
                error,
                self.seconds,
                MIGRATION_JOB,
            )
        left = self._began + self.seconds - now
        if left <= 0:
            raise ConfigError(
                f"{error}; waited {self.seconds:g} s (--wait-for-schema) and it did not run: "
                f"see why (on Kubernetes, `kubectl logs job/{MIGRATION_JOB}`)"
            ) from error
        self.reason = f"waiting for the migration: {error}"
        return min(POLL_SECONDS, left)

    def ended(self) -> None:
        """Say that the schema came, if it was waited for."""
        if self._began is not None:
            log.info(
                "the database schema is at %s, this plangate's, after %.0f s: starting",
                head_revision(),
                time.monotonic() - self._began,
            )


class StoreWait:
    """What a starting worker or `serve` waits for: its database to answer, or its migration.

    One decision for both: a database that does not answer yet (not up, failing over) is
    waited for with a growing delay, a schema behind this plangate's for `seconds` at most
    (`SchemaWait`); anything else is no reason to wait. serve had exited 2 at once on the
    former, and on Kubernetes crash-looped long after the database was back.
    """

    def __init__(self, seconds: float) -> None:
        self.migration = SchemaWait(seconds)
        self._backoff = Backoff()
        self.reason: str | None = None  # what /readyz answers while waiting
        self.store_out = False  # the database does not answer (its gauges are 0, not read)

    def retry_after(self, exc: ConfigError) -> float | None:
        """Return the seconds until the store is opened again; None: `exc` is not waited out."""
        delay = self.migration.retry_after(exc)
        if delay is not None:
            self.reason, self.store_out = self.migration.reason, False
            return delay
        if exc.__cause__ is None or not is_outage(exc.__cause__):
            return None
        delay = self._backoff.next()
        self.reason = redact(f"waiting for the store: {exc}")  # said to anyone who asks
        self.store_out = True
        log.warning("%s; trying again in %g s", exc, delay)
        return delay
