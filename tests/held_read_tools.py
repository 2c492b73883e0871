"""A read held by the test the first time it runs, for the tests of RabbitMQ's ack timeout.

`HELD_READ_MARKER` is a file: the first call of `held_read` notes "held" in it and waits until
the file `<marker>.release` appears; every later call notes "quick" and answers at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from plangate.tools import tool


@tool(effect="read", idempotent=True, timeout=300)
def held_read() -> str:
    """Wait for the test's release the first time; answer at once after that."""
    marker = Path(os.environ["HELD_READ_MARKER"])
    try:
        first = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND)
    except FileExistsError:
        with marker.open("a") as calls:
            calls.write("quick\n")
        return "read at once"
    os.write(first, b"held\n")
    os.close(first)
    release = marker.with_name(marker.name + ".release")
    pause = threading.Event()
    while not release.exists():  # the workload: a call that lasts until the test says
        pause.wait(0.05)
    return "read after a while"
