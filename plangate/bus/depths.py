"""How many messages wait in each stage's queue, as the broker reports it.

The reconciler asks before it resends: a goal whose stage still has a backlog is most likely
queued behind it, and resending into the backlog would only make it longer.
"""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from plangate.bus.bus import Bus
from plangate.bus.topology import STAGES, Stage

log = logging.getLogger(__name__)


def queue_depths(bus: Bus) -> dict[Stage, int]:
    """Return the number of messages waiting (not yet taken) in each stage's queue.

    A stage whose depth cannot be read is left out: the reconciler then treats it as idle,
    which costs at most a resend (handlers are idempotent), never a lost goal.
    """
    depths: dict[Stage, int] = {}
    with bus.connection() as connection:
        channel = connection.default_channel
        for stage in STAGES:
            queue = bus.topology.stage_queue(stage).bind(channel)
            try:
                declared = queue.queue_declare(passive=True)
            except (OperationalError, *connection.channel_errors, *connection.connection_errors):
                log.debug("could not read the depth of %s", queue.name, exc_info=True)
                continue
            depths[stage] = int(getattr(declared, "message_count", 0) or 0)
    return depths
