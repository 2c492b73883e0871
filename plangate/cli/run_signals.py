"""The signals that end `plangate run` early, each taken as Ctrl-C is.

SIGTERM (`kill`, a shutdown) and SIGHUP (the terminal closed: the usual end of a run on a
laptop) ended the process at once, saying nothing: its goal stayed `running` for good, a
write in flight claimed with no one to ask whether it happened. Raised as a KeyboardInterrupt
that names its signal, they take Ctrl-C's way out: the goal is cancelled, a call in flight is
given its grace, what is left is said, and the exit code is the one a shell reports for the
signal (128 + its number).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

_CAUGHT = (signal.SIGTERM, signal.SIGHUP)
# How each signal is said: in the run's message, and in the reason recorded on the goal.
_SAID = {
    signal.SIGINT: ("interrupted", "interrupted at the terminal (Ctrl-C)"),
    signal.SIGTERM: ("terminated (SIGTERM)", "the run was terminated (SIGTERM)"),
    signal.SIGHUP: ("hung up (SIGHUP)", "the run's terminal closed (SIGHUP)"),
}


class Stopped(KeyboardInterrupt):
    """A signal other than Ctrl-C's asked the run to end."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Ending:
    """How a run was asked to end early: the signal, and how it is said."""

    signum: int = signal.SIGINT

    @property
    def exit_code(self) -> int:
        """Return the exit code a shell reports for a process the signal ended."""
        return 128 + self.signum

    @property
    def said(self) -> str:
        """Return the first word of the run's message ("interrupted", ...)."""
        return _SAID[signal.Signals(self.signum)][0]

    @property
    def reason(self) -> str:
        """Return why the goal is cancelled, as recorded on it."""
        return _SAID[signal.Signals(self.signum)][1]


# The signals raised as `Stopped` and not yet taken by the run (see `raise_if_dropped`).
_received: list[int] = []


def ending_of(interrupt: KeyboardInterrupt) -> Ending:
    """Return the ending a KeyboardInterrupt stands for (Ctrl-C's, unless a `Stopped`)."""
    _received.clear()  # taken
    return Ending(interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT)


def raise_if_dropped() -> None:
    """Raise `Stopped` again for a signal whose raise Python dropped; nothing if none was.

    An exception raised by the handler while Python runs a garbage collector's callback is
    printed ("Exception ignored") and dropped: the run went on, called its write and exited 0.
    The run asks here at each turn of its loop, and before it decides anything.
    """
    if _received:
        raise Stopped(_received[-1])


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, raise SIGTERM and SIGHUP as `Stopped` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _stop) for signum in _CAUGHT}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        _away_from_the_closed_terminal()
    _received.append(signum)
    raise Stopped(signum)


def _away_from_the_closed_terminal() -> None:
    """Send what the run still says to /dev/null if it went to the terminal that closed.

    Writing to a terminal that hung up fails (EIO): the run would end in a traceback halfway
    through settling its goal, instead of saying it to no one.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        except (OSError, ValueError):  # no descriptor (replaced in tests), or closed already
            continue
