"""Reading a Redis queue's messages where they are, for a listing that must change nothing.

kombu reads a queue only by taking its messages (and puts back what it keeps): two `plangate
dlq list` at once each saw part of the dead-letter queue, and one killed mid-listing hid the
letters it held until their claim lapsed, minutes later. On Redis a queue is a list (one per
priority), each entry kombu's JSON envelope of a message: read with LRANGE, left in place.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

MAX_PEEKED = 100_000  # entries read at most: a listing is bounded whatever was pushed
MAX_ENTRY = 1024 * 1024  # a larger entry is none of plangate's (a letter keeps 64 KiB of body)


def peek_bodies(channel: Any, queue: str) -> tuple[list[bytes | None], int]:
    """Return the body of each message in `queue`, oldest first, and how many were not read.

    None stands for an entry that is not kombu's envelope of a message, or is too large to be
    one of plangate's; past MAX_PEEKED entries none is read, and the count says so.
    """
    bodies: list[bytes | None] = []
    unread = 0
    with channel.conn_or_acquire() as client:
        for priority in channel.priority_steps:
            key = channel._q_for_pri(queue, priority)
            room = MAX_PEEKED - len(bodies)
            # Pushed on the left, taken from the right: the oldest is last.
            entries = client.lrange(key, -room, -1) if room else []
            unread += max(0, int(client.llen(key)) - len(entries))
            bodies.extend(_body(entry) for entry in reversed(entries))
    return bodies, unread


def _body(entry: bytes | str) -> bytes | None:
    if len(entry) > MAX_ENTRY:
        return None
    try:
        envelope = json.loads(entry)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body, validate=True)
        return body.encode("utf-8") if isinstance(body, str) else None
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return None
