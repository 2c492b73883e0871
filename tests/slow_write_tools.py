"""A write that takes three seconds, for the tests of what `--timeout` does to a write in flight."""

from __future__ import annotations

import time

from plangate.tools import tool


@tool(effect="write", idempotent=True, timeout=30)
def slow_write(message: str) -> str:
    """Take three seconds to write `message` somewhere."""
    time.sleep(3)
    return f"wrote {message}"
