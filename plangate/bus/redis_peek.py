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


def peek_bodies(channel: Any, queue: str) -> list[bytes | None]:
    """Return the body of each message in `queue`, oldest first (None: not kombu's envelope)."""
    bodies: list[bytes | None] = []
    with channel.conn_or_acquire() as client:
        for priority in channel.priority_steps:
            key = channel._q_for_pri(queue, priority)
            # Pushed on the left, taken from the right: the oldest is last.
            entries = client.lrange(key, -(MAX_PEEKED - len(bodies)), -1)
            bodies.extend(_body(entry) for entry in reversed(entries))
            if len(bodies) >= MAX_PEEKED:
                break
    return bodies


def _body(entry: bytes | str) -> bytes | None:
    try:
        envelope = json.loads(entry)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body, validate=True)
        return body.encode("utf-8") if isinstance(body, str) else None
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return None
