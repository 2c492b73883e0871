"""Ending `plangate run` early (Ctrl-C, `--timeout`): its stages stop, or it ends without them."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from plangate import telemetry
from plangate.cli.common import EXIT_INTERRUPTED
from plangate.embedded import Pipeline

# After Ctrl-C, how long in-flight steps get to finish before the process ends anyway.
STOP_GRACE_SECONDS = 5.0


def stop_or_abandon(pipeline: Pipeline, err: Console, code: int = EXIT_INTERRUPTED) -> None:
    """After Ctrl-C or `--timeout`: stop the stages, or end the process if their work will not.

    Python cannot stop a thread, and a handler waiting on a stuck call (a tool, a model server
    asking to be retried in two minutes) would keep the process alive long after the user asked
    it to end. Ending here is what a kill does, which every stage survives: a write in flight
    keeps its claim, and is settled as of unknown outcome; a goal being planned stays submitted.
    """
    try:
        if pipeline.stop(timeout=STOP_GRACE_SECONDS):
            return
        err.print(
            f"the goal's work (a step, or a plan being drafted) is still running after "
            f"{STOP_GRACE_SECONDS:g} s; ending without waiting for it (a write in flight keeps "
            "its claim, and shows as in flight)"
        )
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    telemetry.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
