"""Structured logs: one JSON object per line, carrying the goal id and the trace id.

The consumer binds the goal and message ids of the message being handled; the trace id comes
from the current span. Every record is redacted as it is made (`plangate.redaction`): its
message, its arguments and its traceback, whichever handler writes it (ours, uvicorn's, a test's).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from pythonjsonlogger import json as json_logger

from plangate import telemetry
from plangate.printable import json_escaped
from plangate.redaction import redact

_bound: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "plangate_log", default=MappingProxyType({})
)
_PLAIN = (str, int, float, bool, type(None))
_process_fields: dict[str, str] = {}  # e.g. the worker's stage, on every line of the process


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


class JsonFormatter(json_logger.JsonFormatter):
    """One JSON object per line, with the bound fields and the current span's ids.

    Its fields: UTC time in milliseconds, level, logger, message, the bound fields (stage,
    goal_id, message_id) and the current span's trace_id and span_id. python-json-logger does
    the formatting (extra fields, exceptions, JSON encoding); this adds the time format, the
    bound fields and the trace, then redacts the line.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "error"},
            json_default=str,
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Put the time first, then the record's fields, the bound fields and the trace."""
        at = datetime.fromtimestamp(record.created, UTC)
        log_data["time"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)
        # uvicorn's copy of its message for a terminal, with ANSI colours: not for a JSON line.
        log_data.pop("color_message", None)
        log_data["level"] = record.levelname.lower()
        log_data.update(_process_fields)
        log_data.update(_bound.get())
        # A line may name the trace it belongs to (a goal's move, logged after its commit):
        # that wins over the bound fields and the current span (maybe an HTTP request's).
        named = getattr(record, "trace_id", None)
        if named is not None:
            log_data["trace_id"] = named
            span_id = getattr(record, "span_id", None)
            if span_id is None:
                log_data.pop("span_id", None)
            else:
                log_data["span_id"] = span_id
        elif ids := telemetry.current_span_ids():
            log_data["trace_id"], log_data["span_id"] = ids

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one redacted JSON line, bidi and invisible characters escaped.

        A reviewer's reason or a goal's text may hold U+202E: raw in the line, a terminal or
        a log viewer reordered what an operator read.
        """
        return json_escaped(redact(super().format(record)))


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
    from plangate import retry_lines  # stamina and SQLAlchemy: not for a command's start

    retry_lines.install()  # stamina's line at every try, quoting the driver, is not ours
    # For every thread of the process: a context variable set here would reach only this one.
    _process_fields.clear()
    if stage:
        _process_fields["stage"] = stage


install_redaction()
