"""Ending `plangate run` after Ctrl-C: its stages stop, or the process ends without them."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from plangate.cli.common import EXIT_INTERRUPTED
from plangate.embedded import Pipeline

# After Ctrl-C, how long in-flight steps get to finish before the process ends anyway.
STOP_GRACE_SECONDS = 5.0


def stop_or_abandon(pipeline: Pipeline, err: Console) -> None:
    """After Ctrl-C: stop the stages, or end the process if a tool call will not return.

    Python cannot stop a thread, and a handler waiting on a stuck call would keep the process
    alive until the call's deadline (minutes). Ending here is what a kill does, which every
    stage survives: a write in flight keeps its claim, and is settled as of unknown outcome.
    """
    try:
        if pipeline.stop(timeout=STOP_GRACE_SECONDS):
            return
        err.print(
            f"a step is still running after {STOP_GRACE_SECONDS:g} s; ending without waiting "
            "for it (its claim, if it writes, shows the call as in flight)"
        )
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)
