"""Stdout kept for `--json` events alone, while a run's tools may print."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def events_only_on_stdout(only_events: bool = True) -> Iterator[TextIO]:
    """Yield a stream onto stdout for the events, and send all else written there to stderr.

    `plangate run --json` promises one JSON event per line on stdout, but a tool that prints
    (in a stage's thread, from C, or in a subprocess it starts) wrote between the events. Stdout
    is the process's, not a thread's, so it is moved aside at its file descriptor for the run.
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: a test runner's capture
        descriptor = -1
    shown = sys.stdout
    if not only_events:
        yield shown
        return
    sys.stdout.flush()
    if descriptor != 1:
        sys.stdout = sys.stderr
        try:
            yield shown
        finally:
            sys.stdout = shown
        return
    encoding, errors = shown.encoding, shown.errors
    events = os.fdopen(os.dup(1), "w", encoding=encoding, errors=errors, buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield events
    finally:
        sys.stdout.flush()
        shown.flush()  # written meanwhile through a reference to it: stderr's, before the restore
        events.flush()
        os.dup2(events.fileno(), 1)
        events.close()
        sys.stdout = shown
