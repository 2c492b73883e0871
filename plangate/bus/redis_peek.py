"""Reading a Redis queue's messages where they are, and taking one of them alone.

kombu reads a queue only by taking its messages (and puts back what it keeps): two `plangate
dlq list` at once each saw part of the dead-letter queue, one killed mid-listing hid the
letters it held until their claim lapsed, minutes later, and a purge of one letter among
200,000 raced the workers' restore of what it held. On Redis a queue is a list (one per
priority), each entry kombu's JSON envelope of a message: read with LRANGE, left in place;
a letter purged or replayed is removed alone (LREM).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple

from schemas.decoding import JsonRefused, strict_json_loads

MAX_PEEKED = 100_000  # entries read at most: a listing is bounded whatever was pushed
MAX_ENTRY = 1024 * 1024  # a larger entry is none of plangate's (a letter keeps 64 KiB of body)


class Entry(NamedTuple):
    """One entry of a queue's list: where it is, as it is, and its message's body."""

    key: str
    raw: bytes
    body: bytes | None  # None: not kombu's envelope of a message, or too large for plangate's


def peek(channel: Any, queue: str) -> tuple[list[Entry], int]:
    """Return the entries of `queue`, oldest first, and how many were not read (past the bound)."""
    entries: list[Entry] = []
    unread = 0
    with channel.conn_or_acquire() as client:
        for priority in channel.priority_steps:
            key = channel._q_for_pri(queue, priority)
            room = MAX_PEEKED - len(entries)
            # Pushed on the left, taken from the right: the oldest is last.
            raws = client.lrange(key, -room, -1) if room else []
            unread += max(0, int(client.llen(key)) - len(raws))
            entries.extend(Entry(key, raw, _body(raw)) for raw in reversed(raws))
    return entries, unread


def remove(channel: Any, entry: Entry) -> None:
    """Remove one entry where it is (one copy of it, if it is there more than once).

    Taking every letter to put back those kept raced the workers' restore of unacked
    messages on a long queue: a purge of one letter among 200,000 left 293,000 entries.
    """
    with channel.conn_or_acquire() as client:
        client.lrem(entry.key, 1, entry.raw)


def _body(entry: bytes | str) -> bytes | None:
    if len(entry) > MAX_ENTRY:
        return None
    try:
        # Bounded: one entry nested 100,000 deep, pushed by anyone who can write to Redis,
        # stopped `dlq list` with a RecursionError (the workers dead-letter such an entry).
        envelope = strict_json_loads(entry, max_bytes=MAX_ENTRY)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body, validate=True)
        return body.encode("utf-8") if isinstance(body, str) else None
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, JsonRefused):
        return None
