"""Structured logs: one JSON object per line, carrying the goal id and the trace id.

The consumer binds the goal and message ids of the message being handled; the trace id comes
from the current span. Secrets never reach a log line because handlers log ids, not payloads.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from plangate import telemetry

_bound: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "plangate_log", default=MappingProxyType({})
)


@contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Attach fields (e.g. goal_id) to every log line written inside the block."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with the bound fields and the trace id."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_bound.get(),
        }
        trace_id = telemetry.current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", *, json_lines: bool = True, stage: str = "") -> None:
    """Send plangate's logs to stderr, as JSON lines (workers) or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema checks are not news
    if stage:
        _bound.set({"stage": stage})
