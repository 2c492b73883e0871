"""A slow write that notes, in the file `DRAINING_LOG`, which process began and ended each call.

Each line is `<pid> start <name>` or `<pid> end <name>`: the test sends SIGTERM once a call has
begun, and reads which process called which write, and how often.
"""

from __future__ import annotations

import os
import threading

from plangate.tools import tool


def _note(word: str, name: str) -> None:
    with open(os.environ["DRAINING_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {word} {name}\n")


@tool(effect="write", idempotent=False, timeout=120)
def slow_write(name: str, seconds: float) -> str:
    """Write `name` somewhere, taking `seconds`: not safe to call twice."""
    _note("start", name)
    threading.Event().wait(seconds)  # the workload itself: a slow call, not a synchronisation
    _note("end", name)
    return f"wrote {name}"


@tool(effect="read", timeout=120)
def slow_read(name: str, seconds: float) -> str:
    """Read `name` somewhere, taking `seconds`: safe to call twice, though wasteful."""
    _note("start", name)
    threading.Event().wait(seconds)  # the workload itself, as above
    _note("end", name)
    return f"read {name}"
