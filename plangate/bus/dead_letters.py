"""Dead letters: what could never be handled, kept with its reason and nothing secret."""

from __future__ import annotations

import base64

from plangate.bus.envelope import (
    GOAL_HEADER,
    MESSAGE_ID_HEADER,
    TYPE_HEADER,
    Delivery,
    Envelope,
)
from plangate.bus.topology import STAGE_BINDINGS, Stage, Topology
from plangate.redaction import redact
from schemas import DeadLetter, MessageRejected
from schemas.decoding import MAX_MESSAGE_BYTES, decode_message

# How much of a body over the largest message plangate reads a dead letter keeps. Kept whole,
# a body of 5 MB made a letter past what the dead-letter queue's readers accept: it was then
# neither listed nor purged.
KEPT_BYTES = 64 * 1024
# How a reason ends when the body was cut to KEPT_BYTES (its words are the letter's record of
# it): such a letter is never replayed, since what the stage would read again is not what came.
CUT_NOTE = "bytes are kept)"


_KEPT_B64 = 4 * -(-KEPT_BYTES // 3)  # the length of KEPT_BYTES in base64


def cut_note(kept: int, whole: int) -> str:
    """Return what a reason adds when only `kept` of a body's `whole` bytes are kept."""
    return f" (the first {kept} of {whole} {CUT_NOTE}"


def was_cut(letter: DeadLetter) -> bool:
    """Whether the letter keeps only the start of the body that came.

    Its body is then exactly `KEPT_BYTES` long too: a reason may quote what a sender wrote.
    """
    return letter.reason.endswith(CUT_NOTE) and len(letter.body_b64) == _KEPT_B64


def still_refused(letter: DeadLetter, stage: Stage) -> bool:
    """Whether the letter's stage refuses its body as it is, as it did.

    Not JSON, a field wrong, or a type the stage does not handle (a goal on the gate's list).
    Replayed, it came back at once as a new letter (a new id: the one an operator held was
    gone), and `dlq replay` had said "replayed".
    """
    try:
        message = decode_message(
            base64.b64decode(letter.body_b64), letter.content_type, "utf-8", letter.headers
        )
    except MessageRejected:
        return True
    return str(getattr(message, "type", "")) not in STAGE_BINDINGS[stage]


# Only these headers are copied into a dead letter: anything else may carry a secret.
_KEPT_HEADERS = (
    "traceparent",
    "tracestate",
    "x-plangate-goal-id",
    "x-plangate-message-id",
    "x-plangate-attempt",
)


def dead_letter_envelope(
    body: bytes,
    content_type: str | None,
    delivery: Delivery,
    reason: str,
    goal_id: str | None = None,
) -> Envelope:
    """Build the envelope that carries a failed message to the dead-letter queue.

    Text that came with the message is kept as UTF-8 can carry it (a lone surrogate escaped),
    so that writing the letter cannot fail on what a hostile sender put in it. A body larger
    than any message plangate reads is kept in its first `KEPT_BYTES`, and the reason says so.
    The envelope's headers are the letter's own, as every message's (its type and id; its
    goal's id when `goal_id`, the body's, is known), and the trace it continues.
    """
    if len(body) > MAX_MESSAGE_BYTES:
        reason = reason + cut_note(KEPT_BYTES, len(body))
        body = body[:KEPT_BYTES]
    letter = DeadLetter(
        reason=redact(_text(reason)),
        queue=delivery.queue,
        routing_key=_text(delivery.routing_key),
        content_type=None if content_type is None else _text(content_type),
        headers={k: _text(v) for k, v in delivery.headers.items() if k in _KEPT_HEADERS},
        body_b64=base64.b64encode(body).decode("ascii"),
    )
    headers = {k: v for k, v in delivery.headers.items() if k in ("traceparent", "tracestate")}
    headers |= {TYPE_HEADER: letter.type, MESSAGE_ID_HEADER: letter.message_id}
    if goal_id is not None:
        headers[GOAL_HEADER] = goal_id
    return Envelope(Topology.dead_key(delivery.queue), encode_message_bytes(letter), headers)


def _text(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_message_bytes(letter: DeadLetter) -> bytes:
    """Serialise a dead letter (it is not a stage message, so it has no goal id)."""
    return letter.model_dump_json().encode("utf-8")


def decode_dead_letter(body: bytes) -> DeadLetter:
    """Parse a dead letter read back from the dead-letter queue."""
    return DeadLetter.model_validate_json(body)
