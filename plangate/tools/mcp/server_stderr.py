"""What a stdio MCP server writes on its stderr, logged as plangate's records, each line its own.

The SDK hands a server the executor's own stderr, which is the executor's JSON log stream: a
server's lines went into it raw, where a plain line broke the stream for a log shipper and a JSON
line could pass for plangate's own record (any level, any logger, no goal, nothing redacted).
Each server process gets a pipe of its own instead, read by a thread of its own that ends when
the pipe closes (the process and whatever it started have exited). Each line becomes one record,
`MCP server 'name' said: ...`: redacted, its control characters shown as escapes, cut at
`MAX_LINE_CHARS`; and a server writing faster than `LINES_PER_MINUTE` (after a burst of
`BURST_LINES`) has the rest of its lines counted, not logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from plangate.printable import printable_line
from plangate.redaction import redact

MAX_LINE_CHARS = 2000
"""The most of one stderr line logged; the rest is cut, saying how long the line was."""
BURST_LINES = 100
"""How many lines a server may write at once before its rate is counted."""
LINES_PER_MINUTE = 60
"""How many lines a minute a server's stderr is logged at, past its burst."""

_READ_BYTES = 4 * MAX_LINE_CHARS  # a UTF-8 character takes at most 4 bytes
_SKIP_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


class StderrBudget:
    """How many of one server's stderr lines may be logged: a burst, then a steady rate.

    A flood is said twice: once as it starts (its lines are no longer all logged), once as it
    ends, with how many were not (when the server has slowed down enough to refill half its
    burst, or its stderr closes). One per server, shared by its successive processes: a server
    that crashes at every call is started again at every call, and gets no new burst for it.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._tokens = float(BURST_LINES)
        self._at = time.monotonic()
        self._flooding = False
        self._dropped = 0

    def admit(self) -> bool:
        """Say whether one more line may be logged; count it if not."""
        with self._lock:
            now = time.monotonic()
            refill = (now - self._at) * LINES_PER_MINUTE / 60
            self._tokens, self._at = min(float(BURST_LINES), self._tokens + refill), now
            admitted = self._tokens >= 1
            starts = ends = False
            if admitted:
                self._tokens -= 1
                ends = self._flooding and self._tokens >= BURST_LINES / 2
            else:
                self._dropped += 1
                starts, self._flooding = not self._flooding, True
        if starts:
            logger.warning(
                "MCP server %r writes more than %d lines a minute on its stderr: not all are "
                "logged until it slows down (the others are counted)",
                self._name,
                LINES_PER_MINUTE,
            )
        if ends:
            self.flush()
        return admitted

    def flush(self) -> None:
        """Say how many lines were not logged, if any were not since that was last said."""
        with self._lock:
            dropped, self._dropped, self._flooding = self._dropped, 0, False
        if dropped:
            logger.warning(
                "MCP server %r wrote %d lines on its stderr that were not logged (too many)",
                self._name,
                dropped,
            )


def read_stderr(
    name: str,
    pipe: BinaryIO,
    budget: StderrBudget,
    level: Callable[[], int],
    at_end: Callable[[], None],
) -> threading.Thread:
    """Start the thread that logs each line of `pipe` (closing it at its end), then `at_end()`.

    `level()` is the level a line is logged at when it is read.
    """
    thread = threading.Thread(
        target=_read,
        args=(name, pipe, budget, level, at_end),
        name=f"plangate-mcp-stderr-{name}",
        daemon=True,
    )
    thread.start()
    return thread


def _read(
    name: str,
    pipe: BinaryIO,
    budget: StderrBudget,
    level: Callable[[], int],
    at_end: Callable[[], None],
) -> None:
    try:
        with pipe:
            while line := pipe.readline(_READ_BYTES):
                size = len(line)
                if size == _READ_BYTES and not line.endswith(b"\n"):
                    size += _skip_rest_of_line(pipe)
                if budget.admit():
                    logger.log(level(), "MCP server %r said: %s", name, shown(line, size))
        budget.flush()
    finally:
        at_end()


def _skip_rest_of_line(pipe: BinaryIO) -> int:
    """Read to the end of the current line without keeping it; return how many bytes that was."""
    skipped = 0
    while chunk := pipe.readline(_SKIP_BYTES):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def shown(line: bytes, size: int) -> str:
    """Return a line as logged: redacted, printable, cut at `MAX_LINE_CHARS` saying so."""
    text = printable_line(redact(line.decode("utf-8", "replace").rstrip("\r\n")))
    if len(text) <= MAX_LINE_CHARS and size == len(line):
        return text
    return f"{text[:MAX_LINE_CHARS]}… [cut: the line had {size} bytes]"
