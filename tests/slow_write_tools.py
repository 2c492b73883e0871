"""Steps that take seconds, for the tests of what `--timeout` does to a run under way."""

from __future__ import annotations

import time

from plangate.tools import tool


@tool(effect="write", idempotent=True, timeout=30)
def slow_write(message: str) -> str:
    """Take three seconds to write `message` somewhere."""
    time.sleep(3)
    return f"wrote {message}"


@tool(effect="read", timeout=30)
def slow_read() -> str:
    """Take a second and a half to read something."""
    time.sleep(1.5)
    return "read"
