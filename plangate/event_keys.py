"""The idempotency key of a goal carried by a CloudEvent: one per (source, id), in its own space.

The key was `{source}/{id}`: the events (`/a`, `b/c`) and (`/a/b`, `c`) had one key, so the
second was taken for a duplicate of the first, and a plain goal's key `/billing/evt-777` took
the event (`/billing`, `evt-777`) for itself. Now the pair is written as a JSON array, which
no two pairs share, after a prefix that plain keys may not begin with. A key longer than
goals take (200 characters) is the prefix and a SHA-256 of that array, as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from plangate.errors import InputInvalid, quoted

EVENT_KEY_PREFIX = "cloudevent:"
KEY_LIMIT = 200  # GoalSubmitted.idempotency_key's max_length


def event_key(source: str, event_id: str) -> str:
    """Return the idempotency key of the goal the event (`source`, `event_id`) carries."""
    pair = json.dumps([source, event_id], ensure_ascii=False, separators=(",", ":"))
    key = EVENT_KEY_PREFIX + pair
    if len(key) > KEY_LIMIT:  # a digest cannot begin with "[": no short key is one
        key = EVENT_KEY_PREFIX + "sha256:" + hashlib.sha256(pair.encode()).hexdigest()
    return key


def legacy_event_key(source: str, event_id: str) -> str:
    """Return the key the same event had before this module (for goals stored then)."""
    key = f"{source}/{event_id}"
    if len(key) > KEY_LIMIT:
        key = "ce-sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def refuse_reserved(idempotency_key: object) -> None:
    """Raise InputInvalid if a plain key begins as only CloudEvents' keys may."""
    if isinstance(idempotency_key, str) and idempotency_key.startswith(EVENT_KEY_PREFIX):
        raise InputInvalid(
            f"the idempotency key {quoted(idempotency_key)} begins with {EVENT_KEY_PREFIX!r}, "
            "which names CloudEvents' goals; choose a key that begins otherwise, or send the "
            "goal as a CloudEvent"
        )


EVENT_METADATA_PREFIX = "ce."  # a CloudEvent's source, id and type, as plangate records them


def refuse_event_metadata(metadata: Mapping[str, object] | None) -> None:
    """Raise InputInvalid for metadata keys only a CloudEvent's goal has (`ce.source`...).

    A plain goal's `ce.source` was shown as its CloudEvent source: provenance anyone could
    claim, in any spelling (`CE.source`, ` ce.id`).
    """
    taken = [
        key for key in metadata or {} if str(key).strip().lower().startswith(EVENT_METADATA_PREFIX)
    ]
    if taken:
        raise InputInvalid(
            f"metadata keys beginning {EVENT_METADATA_PREFIX!r} ({quoted(str(taken[0]))}) are a "
            "CloudEvent's source, id and type, set by plangate: rename them, or send the goal "
            "as a CloudEvent"
        )
