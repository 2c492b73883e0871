"""What kombu hands over, read without trusting it: a Delivery, the body's bytes, the message.

Everything here copes with whatever a sender put in a message (headers of any type, text with a
lone surrogate, a body in an unknown encoding), so that reading a message can only end in a
message or a MessageRejected with its reason, never in an error that stops a consume loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from kombu import message as kombu_message
from kombu.message import Message as KombuMessage

from plangate.bus.envelope import ATTEMPT_HEADER, GOAL_HEADER, Delivery
from plangate.bus.redis_transport import malformed_reason
from schemas import MESSAGE_MODELS, Message, MessageRejected, decode_message


def text(value: Any) -> str:
    """Return `value` as text that UTF-8 can carry (a lone surrogate from JSON, escaped)."""
    # Unescaped, it would fail every later write of it: a dead letter, a span, a log line.
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def text_headers(raw: KombuMessage) -> dict[str, str]:
    """Return a message's headers as text."""
    return {text(k): text(v) for k, v in (raw.headers or {}).items()}


def delivery_of(raw: KombuMessage, queue: str) -> Delivery:
    """Return what a handler may know of how `raw` arrived on `queue`."""
    headers = text_headers(raw)
    attempt = headers.get(ATTEMPT_HEADER, "1")
    return Delivery(
        queue=queue,
        routing_key=text(raw.delivery_info.get("routing_key", "")),
        headers=headers,
        # isdecimal, not isdigit: int() refuses "²"; and no number of a thousand digits
        attempt=int(attempt) if attempt.isdecimal() and len(attempt) < 6 else 1,
        redelivered=bool(raw.delivery_info.get("redelivered", False)),
    )


def decode(raw: KombuMessage, body: bytes) -> Message:
    """Decode strictly; raise MessageRejected for whatever is not a message we accept."""
    malformed = malformed_reason(raw.content_type, raw.headers or {})
    if malformed is not None:  # an entry the transport could not read (redis_transport.py)
        raise MessageRejected(malformed)
    if raw.errors:
        raise MessageRejected(f"the broker client could not read it: {raw.errors[0][1]}")
    return decode_message(body, raw.content_type, raw.content_encoding, raw.headers or {})


def misrouted(routing_key: str, message: Message) -> str | None:
    """Say why a message published under another message type's routing key is refused.

    A goal published as `plan.rejected` reached the planner (bound to both) and ran, while
    observers bound to `plan.rejected` took it for a rejection. A retry's or a queue's own
    key names no message type, and passes.
    """
    kind = str(getattr(message, "type", ""))
    if routing_key in MESSAGE_MODELS and routing_key != kind:
        return (
            f"it came under the routing key {routing_key!r}, but it is a {kind}: publish it "
            f"under {kind!r}, which observers read as its type"
        )
    return None


def mislabelled(headers: Mapping[str, str], message: Message) -> str | None:
    """Say why a message whose goal header names another goal than its body is refused.

    Observers, the dead-letter queue, the log and the reconciler's look at held messages read
    the header: one naming another goal was taken in silence, and each of them told of the
    wrong goal. A message with no such header (a foreign publisher's) passes.
    """
    said = headers.get(GOAL_HEADER)
    if said is not None and said != message.goal_id:
        return (
            f"its header {GOAL_HEADER} names goal {said!r}, but it is about goal "
            f"{message.goal_id!r}: set the header to the body's goal_id, or leave it out"
        )
    return None


def original_content_type(raw: KombuMessage) -> str | None:
    """Return the content type a message came with (none, for a malformed broker entry)."""
    if malformed_reason(raw.content_type, raw.headers or {}) is not None:
        return None  # the transport's stand-in type is not the entry's
    content_type: str | None = raw.content_type
    return content_type


def raw_body(raw: KombuMessage) -> bytes:
    """Return a kombu message's body as bytes, whatever the transport handed over.

    py-amqp hands over text when the body decodes in its declared content encoding (and bytes
    when it does not); encoding it back the same way gives the bytes that were sent.
    """
    body: Any = raw.body
    if isinstance(body, bytes):
        return body
    value = str(body)
    for encoding, errors in (
        (raw.content_encoding or "utf-8", "strict"),
        ("utf-8", "surrogateescape"),
    ):
        with suppress(LookupError, UnicodeError):
            return value.encode(encoding, errors)
    return value.encode("utf-8", "surrogatepass")  # a lone surrogate from JSON: never fails


def _refuse_to_decompress(body: Any, content_type: str) -> bytes:
    raise ValueError("compressed messages are not accepted")


def refuse_compressed_messages() -> None:
    """Make kombu leave compressed bodies as they are, in this process.

    kombu inflates a body whose `compression` header says so while it builds the message,
    before any of our checks: a few kilobytes could inflate to gigabytes. plangate accepts no
    compressed message, so a worker process refuses to inflate any.
    """
    kombu_message.decompress = _refuse_to_decompress  # type: ignore[attr-defined]


def unreadable_reason(raw: KombuMessage, error: Exception) -> str:
    """Say why kombu could not read a message: the strict decoder's reason, when it has one."""
    try:  # a compressed body has one
        decode_message(raw_body(raw), raw.content_type, raw.content_encoding, raw.headers or {})
    except MessageRejected as exc:
        return exc.reason
    return f"the broker client could not read it: {error}"
