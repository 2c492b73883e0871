"""Tools for the takeover test: a quick read, then a read that hangs the first time it runs.

`TAKEOVER_MARKER` is a file: the first call of `stalled_read` creates it, writes its process
id in it and hangs (the test SIGKILLs that executor); every later call, in the executor that
takes over, answers at once.
"""

from __future__ import annotations

import os
import threading

from plangate.tools import tool


@tool(effect="read", idempotent=True)
def quick_read() -> int:
    """Answer at once."""
    return 1


@tool(effect="read", idempotent=True, timeout=600)
def stalled_read(number: int) -> int:
    """Hang the first time (until the process is killed); answer at once after that."""
    try:
        marker = os.open(os.environ["TAKEOVER_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return number + 1
    os.write(marker, str(os.getpid()).encode())  # the test kills this process
    os.close(marker)
    threading.Event().wait()
    return number


@tool(effect="read", idempotent=True, timeout=600)
def slow_read(number: int) -> int:
    """Take three seconds (longer than the test's redelivery timeout); note each call."""
    with open(os.environ["TAKEOVER_MARKER"] + ".calls", "a") as calls:
        calls.write(f"{os.getpid()}\n")
    threading.Event().wait(3.0)  # the workload itself: a slow call, not a synchronisation
    return number + 1


@tool(effect="read", idempotent=True)
def flaky_read(number: int) -> int:
    """Fail the first time (the marker file does not exist yet); answer after that."""
    marker = os.environ["TAKEOVER_MARKER"] + ".flaky"
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("the upstream is down (this time)")
    return number + 1
