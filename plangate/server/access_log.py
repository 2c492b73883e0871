"""serve's access log without its probes: a scrape or a health check answered is not news.

Prometheus scrapes `/metrics` every 15 s and Kubernetes probes `/healthz` and `/readyz` every few
seconds: an on-call found 92 of serve's 137 log lines to be `GET /metrics`, the requests that
mattered between them. A probe that was refused (a 503 of `/readyz`) is still logged, and all of
them are at `PLANGATE_LOG_LEVEL=DEBUG`. The workers' probes are served apart and never logged.
"""

from __future__ import annotations

import logging

PROBES = frozenset({"/metrics", "/healthz", "/readyz"})
ACCESS_LOGGER = "uvicorn.access"


class ProbesUnlogged(logging.Filter):
    """Drop uvicorn's access line of a probe answered below 400, unless its logger says DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a successful probe's line (uvicorn's arguments: who, method, path…)."""
        args = record.args
        if not isinstance(args, tuple) or len(args) < 5:
            return True
        _client, method, path, _version, status = args[:5]
        if method not in ("GET", "HEAD") or str(path).split("?", 1)[0] not in PROBES:
            return True
        if not isinstance(status, int) or status >= 400:
            return True
        return logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.DEBUG)


def leave_probes_out() -> None:
    """Install `ProbesUnlogged` on uvicorn's access logger (once)."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, ProbesUnlogged) for f in access.filters):
        access.addFilter(ProbesUnlogged())
