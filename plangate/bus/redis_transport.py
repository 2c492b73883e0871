"""kombu's Redis transport, where a list entry that is not a message becomes one that says so.

Anyone who can reach Redis can `LPUSH` onto a stage's list (docs/publishing-goals.md invites
other services to). kombu 5.7 reads an entry in `Channel._brpop_read` (and `Channel._get` for a
synchronous get) as `loads(bytes_to_str(item))`, then builds its `Message` from
`payload['properties']['delivery_tag']`, `['delivery_info']`, the body decoded by
`properties['body_encoding']`, and records it as unacked with its exchange and routing key. An
entry that is not UTF-8 JSON, or lacks any of those, raises inside `drain_events`, after the
entry was popped: the consume loop cannot tell that from a lost broker, and the entry is gone.

So every entry popped through this transport is checked first, as kombu would read it, and one
that kombu could not turn into a message is replaced by a well-formed one: content type
`MALFORMED_CONTENT_TYPE`, the entry's first `KEPT_BYTES` as its body and the reason in the
`REASON_HEADER`. kombu then tracks it as unacked like any other message (a worker that dies
before settling it leaves it to be restored), and the consume loop dead-letters it in its one
place, with the raw bytes and the reason, and goes on at full speed.

The check sits in the Redis client's response callbacks for the two commands that read entries
(BRPOP and RPOP) of the clients this channel makes: kombu's own reading code runs unchanged, so
nothing of it is copied here. The entry is parsed once more by kombu; a few microseconds.

Other transports need no such step. The memory transport's entries are dicts that kombu itself
built in this process; nothing outside the process can put anything there. On AMQP the broker
frames every message (properties and a delivery tag always exist) and whatever the body is
reaches the strict decoder, which dead-letters it (`tests/test_malformed_entries.py` shows it).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps, loads

from plangate.bus.dead_letters import KEPT_BYTES, cut_note
from plangate.bus.redis_routing import ScriptedRouting

# The URL schemes of Redis brokers, which this transport serves.
SCHEMES = ("redis", "rediss")
MALFORMED_CONTENT_TYPE = "application/x-plangate-malformed-entry"
REASON_HEADER = "x-plangate-malformed"
# Far above any message plangate sends (a 1 MiB body, base64, in a dead letter, base64 again).
MAX_ENTRY_BYTES = 8 * 1024 * 1024
_MAX_TAG_CHARS = 128
_MAX_NAME_CHARS = 255  # AMQP's limit on exchange names and routing keys


def entry_problem(item: bytes | str) -> str | None:
    """Return why kombu could not turn this list entry into a message, or None if it can."""
    size = len(item)
    if size > MAX_ENTRY_BYTES:
        return f"the entry is {size} bytes; the limit is {MAX_ENTRY_BYTES}"
    try:
        payload = loads(item)  # what kombu does: UTF-8, then JSON with its `__type__` objects
    except UnicodeDecodeError as exc:
        return f"the entry is not UTF-8: {exc.reason}"
    except RecursionError:
        return "the entry is JSON nested too deeply"
    except Exception as exc:  # JSONDecodeError; whatever a `__type__` decoder raises
        return f"the entry is not JSON kombu can read: {str(exc)[:200]}"
    if not isinstance(payload, dict):
        return "the entry is not a JSON object"
    return _envelope_problem(payload)


def _envelope_problem(payload: dict[str, Any]) -> str | None:
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the entry has no `properties` object"
    tag = properties.get("delivery_tag")
    if tag is None:
        return "the entry has no delivery tag (`properties.delivery_tag`)"
    if not (tag and _is_text(tag, _MAX_TAG_CHARS)):
        return f"the delivery tag is not a string of 1-{_MAX_TAG_CHARS} characters"
    info = properties.get("delivery_info")
    if not (
        isinstance(info, dict)
        and _is_text(info.get("exchange"), _MAX_NAME_CHARS)
        and _is_text(info.get("routing_key"), _MAX_NAME_CHARS)
    ):
        return "`properties.delivery_info` needs an `exchange` and a `routing_key` string"
    # Absent is fine; null is not: kombu's restore of an unacked message sets a header on it.
    if not isinstance(payload.get("headers", {}), dict):
        return "`headers` is not an object"
    for field in ("content-type", "content-encoding"):
        if not isinstance(payload.get(field) or "", str):
            return f"`{field}` is not a string"
    return _body_problem(payload.get("body"), properties.get("body_encoding"))


def _is_text(value: Any, most: int) -> bool:
    """Say whether `value` is a string of at most `most` characters that UTF-8 can carry."""
    if not isinstance(value, str) or len(value) > most:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return False
    return True


def _body_problem(body: Any, encoding: Any) -> str | None:
    if not isinstance(body, str):
        return "the entry's `body` is not a string"
    if encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the body is not valid base64, as `properties.body_encoding` says it is"
        return None
    if encoding not in (None, "", "utf-8"):
        # kombu decodes any other encoding with a codec it does not have, and fails.
        return f"body encoding {str(encoding)[:40]!r} is not known (base64 is)"
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return "the body text cannot be encoded as UTF-8 (a lone surrogate)"
    return None


def malformed_entry(item: bytes | str, queue: str, reason: str) -> str:
    """Return a kombu entry that carries a malformed one's first bytes and what was wrong.

    Its delivery info names the queue itself (the anonymous exchange), so kombu restores it
    there if its worker dies before dead-lettering it.
    """
    raw = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
    kept = raw[:KEPT_BYTES]
    if len(raw) > len(kept):
        reason = reason + cut_note(len(kept), len(raw))
    return str(
        dumps(
            {
                "body": base64.b64encode(kept).decode("ascii"),
                "content-encoding": "binary",
                "content-type": MALFORMED_CONTENT_TYPE,
                "headers": {REASON_HEADER: reason},
                "properties": {
                    "body_encoding": "base64",
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "delivery_mode": 2,
                    "delivery_tag": str(uuid.uuid4()),
                    "priority": 0,
                },
            }
        )
    )


def malformed_reason(content_type: str | None, headers: dict[str, Any]) -> str | None:
    """Return the reason this transport gave a message standing in for a malformed entry."""
    if content_type != MALFORMED_CONTENT_TYPE:
        return None
    return f"the broker entry is not a message: {headers.get(REASON_HEADER, 'malformed')}"


class Channel(ScriptedRouting):
    """kombu's Redis channel whose clients check every entry they pop (BRPOP and RPOP).

    It publishes through `ScriptedRouting` (redis_routing.py).
    """

    _popping: str = ""  # the queue `_get` pops from: an RPOP reply does not name it
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu makes a new client for every ack and every unacked record (`conn_or_acquire`),
        # and building one (its table of ~200 reply parsers) was a fifth of a message's CPU
        # here. A client is a stateless face of its connection pool: one per pool serves.
        if not asynchronous:
            cached = self._sync_client
            if cached is not None and cached.connection_pool is self.pool:
                return cached
        client = super()._create_client(asynchronous)
        for command, queue_of in (("BRPOP", self._brpop_queue), ("RPOP", self._rpop_queue)):
            parse = client.response_callbacks.get(command)
            client.set_response_callback(command, self._checking(parse, queue_of))
        if not asynchronous:
            self._sync_client = client
        return client

    def _get(self, queue: str, timeout: Any = None) -> Any:
        self._popping = queue
        try:
            return super()._get(queue)
        finally:
            self._popping = ""

    def _checking(
        self, parse: Callable[..., Any] | None, queue_of: Callable[[Any], tuple[str, Any]]
    ) -> Callable[..., Any]:
        def checked(response: Any, **options: Any) -> Any:
            reply = parse(response, **options) if parse is not None else response
            if not reply:
                return reply
            queue, item = queue_of(reply)
            problem = entry_problem(item)
            if problem is None:
                return reply
            replacement = malformed_entry(item, queue, problem)
            return (reply[0], replacement) if isinstance(reply, tuple | list) else replacement

        return checked

    def _brpop_queue(self, reply: Any) -> tuple[str, Any]:
        key, item = reply
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        prefix = self.global_keyprefix or ""
        name = name.removeprefix(prefix).rsplit(self.sep, 1)[0]  # a priority list's base queue
        return name, item

    def _rpop_queue(self, reply: Any) -> tuple[str, Any]:
        return self._popping, reply


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the checking channel; the bus uses it for redis://."""

    Channel = Channel

    def close_connection(self, connection: Any) -> None:
        """Close each channel while it is still the transport's, then as kombu does.

        kombu takes a channel off `channels` before closing it. A consumer's channel closing
        with a BRPOP outstanding reads its reply then (a message that came meanwhile), finds
        the consumer cancelled and requeues it through the first channel listed: with none
        left, the message was dropped. A worker stopped by SIGTERM lost the goal it was just
        handed, until the reconciler sent it again a minute later.
        """
        try:
            for channel in list(self.channels):
                channel.close()
        finally:  # a channel failing to close (Redis gone) leaves the rest to kombu's way
            super().close_connection(connection)
