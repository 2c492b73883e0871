"""What the bus moves: routing key, headers and body bytes. Decoding happens elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from schemas import MESSAGE_MODELS, Message, encode_message
from schemas.headers import ATTEMPT_HEADER as ATTEMPT_HEADER
from schemas.headers import GOAL_HEADER as GOAL_HEADER
from schemas.headers import MESSAGE_ID_HEADER as MESSAGE_ID_HEADER
from schemas.headers import SENT_AT_HEADER as SENT_AT_HEADER
from schemas.headers import TYPE_HEADER as TYPE_HEADER

CONTENT_TYPE = "application/json"


def sent_at(headers: Mapping[str, object]) -> datetime | None:
    """Return when this copy was published, or None if the header is absent or unreadable."""
    value = headers.get(SENT_AT_HEADER)
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Envelope:
    """A message ready to publish. `outbox_id` ties it to the outbox row it came from."""

    routing_key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    outbox_id: int | None = None

    @classmethod
    def of(cls, message: Message, headers: dict[str, str] | None = None) -> Envelope:
        """Wrap a message; its routing key is its type and the ids go into headers."""
        merged = dict(headers or {})
        merged[GOAL_HEADER] = message.goal_id
        merged[MESSAGE_ID_HEADER] = message.message_id
        routing_key: str = getattr(message, "type")  # noqa: B009 - every concrete message has one
        merged[TYPE_HEADER] = routing_key
        return cls(routing_key=routing_key, body=encode_message(message), headers=merged)


@dataclass(frozen=True)
class Delivery:
    """What a handler may know of how a message arrived."""

    queue: str
    routing_key: str
    headers: dict[str, str]
    attempt: int
    redelivered: bool

    @property
    def message_type(self) -> str:
        """The message's type: its routing key, unless this is a retry copy that says.

        Only a type plangate knows is taken from the header (a metric label must stay bounded).
        """
        kind = self.headers.get(TYPE_HEADER)
        return kind if isinstance(kind, str) and kind in MESSAGE_MODELS else self.routing_key
