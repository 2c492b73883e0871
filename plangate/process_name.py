"""Which plangate process this is, as its PostgreSQL connections say it (`application_name`).

Every plangate connection looked alike in pg_stat_activity: a DBA counting connections, or
ending a stuck one, could not tell serve's from an executor's. The CLI names its process
(`plangate-cli`, `plangate-serve`, `plangate-planner`, ...) before it opens a store; a service
using the `Client` is `plangate`. A database URL's own `application_name` wins.
"""

from __future__ import annotations

_named = ["plangate"]  # the process's one name: set once at start, read at each connection


def name_process(role: str) -> None:
    """Name this process's PostgreSQL connections opened from now on `plangate-{role}`."""
    _named[0] = f"plangate-{role}"


def process_name() -> str:
    """Return the `application_name` this process's PostgreSQL connections carry."""
    return _named[0]
