"""Fault injection for the kill tests: die at a named point, once, when the tests ask.

Only the tests set `PLANGATE_FAULT` (a point name) and `PLANGATE_FAULT_MARKER` (a file that
records that the fault fired, so the restarted process runs on). In production both are unset
and `trip` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_receive", "after_commit", "after_publish", "mid_tool")


def trip(point: str) -> None:
    """SIGKILL this process at `point` if the tests asked for it and it has not fired yet."""
    if os.environ.get("PLANGATE_FAULT") != point:
        return
    marker = os.environ.get("PLANGATE_FAULT_MARKER")
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
