"""A write that waits for the test's word before it returns, counting its calls in a file.

`PLANGATE_TEST_GATE_DIR` names a folder: each call appends a line to `calls`, then waits for a
file `release` there, so a test can act (stop the database, say) while the effect is done
and its result not yet recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from plangate.tools import tool


@tool(effect="write", idempotent=False, timeout=60)
def gated_write(message: str) -> str:
    """Write `message` once the test releases the call (not idempotent: never call it twice)."""
    folder = Path(os.environ["PLANGATE_TEST_GATE_DIR"])
    with (folder / "calls").open("a") as calls:
        calls.write(message + "\n")
    deadline = time.monotonic() + 50
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"wrote {message}"
