"""Structured logs: one JSON object per line, carrying the goal id and the trace id.

The consumer binds the goal and message ids of the message being handled; the trace id comes
from the current span. Every record is redacted as it is made (`plangate.redaction`): its
message, its arguments and its traceback, whichever handler writes it (ours, uvicorn's, a test's).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from plangate import telemetry
from plangate.redaction import redact

_bound: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "plangate_log", default=MappingProxyType({})
)
_PLAIN = (str, int, float, bool, type(None))


@contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Attach fields (e.g. goal_id) to every log line written inside the block."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a record in place: its message, its arguments, its traceback and stack."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None:
        record.msg = redact(str(record.msg))
    if isinstance(record.args, Mapping):
        record.args = {key: _redacted_arg(value) for key, value in record.args.items()}
    elif record.args:
        # Kept a tuple, not merged into msg: some formatters read the arguments (uvicorn's).
        record.args = tuple(_redacted_arg(value) for value in record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def _redacted_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value  # numbers keep their %d
    try:
        text = str(value)
    except Exception:  # a broken __str__ is the handler's to report, as without redaction
        return value
    cleaned = redact(text)
    # An object (an exception, a path) is replaced by its text only when that hid a secret.
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """Redact every record a handler writes (for handlers fed records made elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record and let it through."""
        redact_record(record)
        return True


def install_redaction() -> None:
    """Make every log record of the process redacted as it is made (once; safe to repeat)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "plangate_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(current(*args, **kwargs))

    redacting: Callable[..., logging.LogRecord] = factory
    redacting.plangate_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


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
            entry["error"] = record.exc_text or self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def setup_logging(level: str = "INFO", *, json_lines: bool = True, stage: str = "") -> None:
    """Send plangate's logs to stderr, as JSON lines (workers) or plain text."""
    install_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
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


install_redaction()
