"""Reading a goal from a request body: plain JSON, or a CloudEvent (structured or binary mode).

Every refusal is an `ApiError` whose message says what to send instead. A CloudEvent's goal is
idempotent on the event: its key is made of its source and id (`plangate.event_keys`), so the
same event twice yields one goal, and no other event or plain key shares it.
Bodies are read with the one bounded JSON reader (`schemas.decoding.strict_json_loads`): JSON
nested too deep is a 422, and so is text that cannot be stored (a lone surrogate, NUL), before
anything reaches the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers

from plangate.errors import InputInvalid
from plangate.event_keys import EVENT_KEY_PREFIX, KEY_LIMIT, refuse_event_metadata
from plangate.server.errors import ApiError
from plangate.server.json_bodies import JSON, json_object, json_value, media_type, problems_of
from schemas.messages import Metadata

GOAL_EVENT_TYPE = "dev.plangate.goal.submitted"
CLOUDEVENT_JSON = "application/cloudevents+json"
_REQUIRED = ("specversion", "id", "source", "type")
_TEXT_ATTRIBUTES = ("time", "subject", "dataschema", "datacontenttype")
_NEEDS = "a CloudEvent 1.0 needs specversion, id, source and type"


class GoalRequest(BaseModel):
    """A goal submitted as plain JSON."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=10_000, description="What you want done.")
    metadata: Metadata = Field(
        default_factory=dict,
        description="Kept with the goal: at most 64 labels (a CloudEvent's source, id and type "
        "take three), keys up to 100 characters, values up to 2000.",
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=KEY_LIMIT,  # an empty one is refused where every goal is submitted
        description=f"The same key twice yields one goal. Keys beginning {EVENT_KEY_PREFIX!r} "
        "are CloudEvents' (their source and id).",
    )


class EventGoal(GoalRequest):
    """A goal that came as a CloudEvent: its key is the event's (source, id), never its own."""

    event_source: str
    event_id: str
    # The event's own trace context (the CloudEvents distributed-tracing extension), which a
    # structured-mode event carries in its body, not in the request's headers.
    trace_headers: dict[str, str] = Field(default_factory=dict)

    @property
    def event(self) -> tuple[str, str]:
        """The event's (source, id)."""
        return self.event_source, self.event_id


def parse_goal(headers: Headers, body: bytes) -> GoalRequest:
    """Return the goal a request carries, whichever of the three forms it uses."""
    kind = media_type(headers)
    is_event = kind == CLOUDEVENT_JSON or any(k.lower().startswith("ce-") for k in headers)
    if is_event and "idempotency-key" in headers:  # it was dropped in silence
        raise ApiError(
            422,
            "a CloudEvent's key is its source and id: send it without an Idempotency-Key "
            "header, or send a plain JSON goal with one",
        )
    if kind == CLOUDEVENT_JSON:
        return _event_goal({"content-type": headers["content-type"]}, body, binary=False)
    # Any ce-* header makes a binary-mode event, to be refused if incomplete: read as plain
    # JSON, an event lacking ce-specversion lost its key, and each retry made another goal.
    binary = _event_headers(headers)
    if kind == JSON and binary:
        return _event_goal({"content-type": headers["content-type"], **binary}, body, binary=True)
    if kind == JSON:
        return _plain_goal(headers, json_object(body, "the body"))
    raise ApiError(
        415,
        f"unsupported content type {kind or '(none)'!r}; send {JSON} "
        f'({{"text": ...}}), a CloudEvent as {CLOUDEVENT_JSON}, or a binary-mode CloudEvent '
        f"(ce-* headers) with {JSON} data",
    )


def _event_headers(headers: Headers) -> dict[str, str]:
    """Return a binary-mode event's ce-* headers; 422 for one sent twice.

    The last of two was read: `ce-source: urn:y` then `ce-source: urn:billing` made a goal of
    billing's, while a proxy reading the first saw urn:y (a source a rule may bar).
    """
    names = [name.lower() for name, _ in headers.items() if name.lower().startswith("ce-")]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ApiError(422, f"send each CloudEvent header once, not {', '.join(twice)} twice")
    return {name.lower(): value for name, value in headers.items() if name.lower() in names}


def _plain_goal(headers: Headers, fields: dict[str, Any]) -> GoalRequest:
    """Return a plain JSON goal; its key may come as the `Idempotency-Key` header, as is common.

    Metadata only a CloudEvent's goal has (`ce.source`) is refused where every goal is
    submitted (`plangate.submission`), the CLI's and the Python client's too.
    """
    sent = headers.getlist("idempotency-key")
    if len(sent) > 1:  # the first alone was read: a retry whose proxy added one made a goal
        raise ApiError(
            422,
            f"send one Idempotency-Key header, not {len(sent)}: a retry must carry the same key",
        )
    header = _utf8(headers.get("idempotency-key"))
    if header is not None and not 1 <= len(header.strip()) <= KEY_LIMIT:
        raise ApiError(
            422,
            f"the Idempotency-Key header must hold 1 to {KEY_LIMIT} characters, not "
            f"{len(header)}; send a key of your own, or none",
        )
    if header is not None:
        given = fields.get("idempotency_key")
        if given is not None and given != header:
            raise ApiError(
                422,
                "the Idempotency-Key header and the body's idempotency_key differ; send one "
                "key, in either place",
            )
        fields = {**fields, "idempotency_key": header}
    return _validated(fields)


def _utf8(header: str | None) -> str | None:
    """Return a header's text as UTF-8 says it (Starlette hands its bytes over as Latin-1).

    Read as Latin-1, `café` sent in the header and in the body were two keys, two goals.
    """
    if header is None:
        return None
    try:
        text = header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise ApiError(422, "the Idempotency-Key header is not UTF-8 text; send it so") from None
    if not text.isprintable():
        raise ApiError(422, "the Idempotency-Key header holds a control character; remove it")
    return text


def _validated(fields: Mapping[str, Any]) -> GoalRequest:
    try:
        return GoalRequest.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(
            422, f'invalid goal: {problems_of(exc)}; send {{"text": "what you want done"}}'
        ) from exc


def _event_goal(headers: dict[str, str], body: bytes, *, binary: bool) -> GoalRequest:
    if binary:
        given = {name.removeprefix("ce-"): value for name, value in headers.items()}
        if body.strip():  # bounded and storable before the SDK reads it
            json_value(body, "the event's data")
    else:
        given = json_object(body, "the CloudEvent")  # a clear 400 before the SDK's own errors
    _check_attributes(given)
    event = _read_event(headers, body)
    if event.get_type() != GOAL_EVENT_TYPE:
        raise ApiError(
            422, f"unsupported event type {event.get_type()!r}; send type {GOAL_EVENT_TYPE!r}"
        )
    data = event.get_data()
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "the event's data must be a JSON object, as `data` (not `data_base64`): "
            '{"text": "what you want done"}',
        )
    unknown = sorted(str(name) for name in data if name not in ("text", "metadata"))
    if unknown:  # a plain goal refuses them too; its key here is the event's source and id
        raise ApiError(
            422,
            f"the event's data holds {', '.join(repr(n[:40]) for n in unknown[:5])}, which a goal "
            'does not take; send {"text": ..., "metadata": {...}} (its key is the event\'s '
            "source and id)",
        )
    metadata = data.get("metadata", {})
    if isinstance(metadata, dict):
        try:
            refuse_event_metadata(metadata)  # the event's own are set below, from the event
        except InputInvalid as exc:
            raise ApiError(422, str(exc)) from None
        metadata = {
            **metadata,
            "ce.source": event.get_source(),
            "ce.id": event.get_id(),
            "ce.type": event.get_type(),
        }
    goal = _validated({"text": data.get("text"), "metadata": metadata})
    traced = {name: event.get_extension(name) for name in ("traceparent", "tracestate")}
    return EventGoal(
        **goal.model_dump(),
        event_source=event.get_source(),
        event_id=event.get_id(),
        trace_headers={k: v for k, v in traced.items() if isinstance(v, str)},
    )


def _check_attributes(given: Mapping[str, Any]) -> None:
    """Refuse, in one line each, what the SDK would refuse in its own words (or accept)."""
    # The SDK fills in a missing id with a random one, which would defeat idempotency.
    missing = [name for name in _REQUIRED if not given.get(name)]
    if missing:
        raise ApiError(400, f"the CloudEvent lacks {', '.join(missing)}; {_NEEDS}")
    for name in (*_REQUIRED, *_TEXT_ATTRIBUTES):
        if name in given and not isinstance(given[name], str):
            kind = type(given[name]).__name__
            raise ApiError(400, f"the CloudEvent's {name} must be a JSON string, not {kind}")
    if given["specversion"] != "1.0":
        raise ApiError(400, f"CloudEvents specversion {given['specversion']!r}; send 1.0")
    if "time" in given:
        try:
            datetime.fromisoformat(given["time"])
        except ValueError:
            raise ApiError(
                400,
                f"the CloudEvent's time {given['time'][:40]!r} is not an RFC 3339 time; send "
                "one such as 2026-01-01T09:00:00Z, or none",
            ) from None


def _read_event(headers: dict[str, str], body: bytes) -> BaseCloudEvent:
    try:
        return from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
    except (BaseCloudEventException, ValueError, TypeError, AttributeError, KeyError) as exc:
        # The SDK signals a bad event with many types; any of them means "not a CloudEvent".
        said = str(exc).replace("Failed to create CloudEvent due to the validation errors:", "")
        said = " ".join(said.split())[:200]  # one line, bounded: the SDK's may run to many
        raise ApiError(400, f"not a valid CloudEvent ({said.strip(': ')}); {_NEEDS}") from exc
