"""Fault injection for the kill tests: die at a named point, once, when the tests ask.

Only the tests set `PLANGATE_FAULT` (a point name) and `PLANGATE_FAULT_MARKER` (a file that
records that the fault fired, so the restarted process runs on), read as `Settings.fault` and
`Settings.fault_marker`. In production both are unset and `trip` costs a look at the settings.
"""

from __future__ import annotations

import os
import signal

from plangate.current_settings import current_settings

POINTS = ("after_receive", "after_commit", "after_publish", "mid_tool")


def trip(point: str) -> None:
    """SIGKILL this process at `point` if the tests asked for it and it has not fired yet."""
    settings = current_settings()
    if settings.fault != point:
        return
    marker = settings.fault_marker
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
