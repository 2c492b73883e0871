"""The AsyncAPI 3.0.0 document of plangate's bus: every channel, message and stage operation.

Pure: builds a dict; `plangate schema asyncapi` writes it. The payloads are the pydantic models'
JSON Schemas, with their shared definitions moved to `components.schemas`. The channels and who
sends and receives on each come from the routing table, `schemas.routing`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.export import ENVELOPE_FIELDS
from schemas.messages import MESSAGE_MODELS, DeadLetter
from schemas.routing import DEAD_LETTER_TYPE, ROUTES, STAGES, Route, check_routes, dead_key

ASYNCAPI_VERSION = "3.0.0"
_REF_TEMPLATE = "#/components/schemas/{model}"

_HEADER_PROPERTIES: dict[str, Any] = {
    "x-plangate-goal-id": {
        "type": "string",
        "description": "The body's `goal_id` (a message whose header names another goal is a "
        "dead letter).",
    },
    "x-plangate-message-id": {"type": "string", "description": "The body's `message_id`."},
    "x-plangate-type": {"type": "string", "description": "The body's `type`."},
    "x-plangate-sent-at": {
        "type": "string",
        "description": "Set by plangate at each publish: when this copy was handed to the broker "
        "(ISO 8601).",
    },
    "x-plangate-attempt": {
        "type": "string",
        "description": "Set by plangate on a retry: the attempt number, from 1.",
    },
    "traceparent": {
        "type": "string",
        "description": "W3C trace context: the span that published the message.",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    },
    "tracestate": {"type": "string", "description": "W3C trace state, if any."},
}
_WHERE = "AMQP message headers (on Redis: the kombu envelope's `headers`)."

HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"{_WHERE} plangate sets the required ones on every message it publishes.",
    "required": [
        "x-plangate-goal-id",
        "x-plangate-message-id",
        "x-plangate-type",
        "x-plangate-sent-at",
    ],
    "properties": _HEADER_PROPERTIES,
}
PUBLISHER_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        f"{_WHERE} A publisher outside plangate need send none: the body says it all. "
        "`x-plangate-goal-id` and `x-plangate-message-id` (the body's ids) and `traceparent` "
        "are recommended; plangate's own publishers send all that `Headers` requires."
    ),
    "required": [],
    "properties": _HEADER_PROPERTIES,
}
DEAD_LETTER_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        f"{_WHERE} The dead letter's own type and id; its goal's id only where the goal is "
        "known (the refused message's body could be read); the trace of the refused message. "
        "What the refused message's headers said is in the body's `headers`."
    ),
    "required": ["x-plangate-message-id", "x-plangate-type", "x-plangate-sent-at"],
    "properties": {
        **_HEADER_PROPERTIES,
        "x-plangate-goal-id": {
            "type": "string",
            "description": "Present only where the goal is known: the refused message's "
            "`goal_id`, read from its body where that decoded as a valid message.",
        },
        "x-plangate-message-id": {
            "type": "string",
            "description": "The dead letter's own `message_id`.",
        },
        "x-plangate-type": {"type": "string", "const": "dead.letter"},
    },
}
# The headers of each message type that does not carry `Headers` (the default).
_HEADERS_OF = {"goal.submitted": "PublisherHeaders", DEAD_LETTER_TYPE: "DeadLetterHeaders"}


def _ident(message_type: str) -> str:
    """Return a routing key as a component id: `step.finished` -> `stepFinished` (`_` too)."""
    first, *rest = message_type.replace("_", ".").split(".")
    return first + "".join(part.capitalize() for part in rest)


def _component_schemas() -> tuple[dict[str, Any], dict[str, str]]:
    """Return every model's schema and shared definition by name, and each model's name."""
    models: set[type[BaseModel]] = {*MESSAGE_MODELS.values(), DeadLetter}
    refs, top = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template=_REF_TEMPLATE,
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    names = {model.__name__: str(ref["$ref"]).rsplit("/", 1)[1] for (model, _), ref in refs.items()}
    for name in names.values():
        required: list[str] = schemas[name].setdefault("required", [])
        for field in ENVELOPE_FIELDS:  # defaulted in Python, yet refused when missing
            if field in schemas[name].get("properties", {}) and field not in required:
                required.append(field)
    return schemas, names


def _message(message_type: str, model_name: str, shared: bool, summary: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"$ref": _REF_TEMPLATE.format(model=model_name)}
    if shared:  # one model, several types: pin this channel's `type`
        payload = {"allOf": [payload, {"properties": {"type": {"const": message_type}}}]}
    return {
        "name": message_type,
        "title": message_type,
        "summary": summary,
        "contentType": "application/json",
        "headers": {"$ref": _REF_TEMPLATE.format(model=_HEADERS_OF.get(message_type, "Headers"))},
        "payload": payload,
        "bindings": {"amqp": {"contentEncoding": "utf-8", "bindingVersion": "0.3.0"}},
    }


def _channel(address: str, ident: str, description: str, namespace: str) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "messages": {ident: {"$ref": f"#/components/messages/{ident}"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": namespace, "type": "topic", "durable": True, "vhost": "/"},
                "bindingVersion": "0.3.0",
            }
        },
    }


def _operation(stage: str, action: str, message_type: str) -> tuple[str, dict[str, Any]]:
    ident = _ident(message_type)
    verb = "Receives" if action == "receive" else "Sends"
    return f"{stage}{verb}{ident[0].upper()}{ident[1:]}", {
        "action": action,
        "channel": {"$ref": f"#/channels/{ident}"},
        "messages": [{"$ref": f"#/channels/{ident}/messages/{ident}"}],
        "summary": f"The {stage} {verb.lower()} {message_type}.",
    }


def _operations() -> dict[str, Any]:
    """Return who sends and who receives each message type, as `schemas.routing` says."""
    operations: dict[str, Any] = {}
    for route in ROUTES.values():
        for action, parties in (("send", route.sent_by), ("receive", route.consumed_by)):
            for party in parties:
                key, operation = _operation(party, action, route.type)
                operations[key] = operation
    for stage in STAGES:
        key, operation = _operation(stage, "send", DEAD_LETTER_TYPE)
        operations[key] = operation
    key, operation = _operation("operator", "receive", DEAD_LETTER_TYPE)
    operations[key] = operation
    return operations


def _description(route: Route) -> str:
    """Return a channel's description: its key, who sends it, who consumes it, if it ends."""
    consumers = ", ".join(route.consumed_by) or "no stage (observers only)"
    text = (
        f"Messages of type `{route.type}` (routing key = type). Sent by "
        f"{', '.join(route.sent_by)}; consumed by {consumers}."
    )
    return text + (" Ends the goal." if route.terminal else "")


def asyncapi_document(namespace: str = "plangate") -> dict[str, Any]:
    """Return the AsyncAPI 3.0.0 document of the bus in `namespace` (a JSON-ready dict)."""
    check_routes(MESSAGE_MODELS)
    schemas, names = _component_schemas()
    counts: dict[str, int] = {}
    for model in MESSAGE_MODELS.values():
        counts[model.__name__] = counts.get(model.__name__, 0) + 1
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for message_type, route in ROUTES.items():
        model = MESSAGE_MODELS[message_type]
        ident = _ident(message_type)
        summary = (model.__doc__ or message_type).strip().splitlines()[0]
        shared = counts[model.__name__] > 1
        messages[ident] = _message(message_type, names[model.__name__], shared, summary)
        channels[ident] = _channel(route.routing_key, ident, _description(route), namespace)
    dead = _ident(DEAD_LETTER_TYPE)
    summary = (DeadLetter.__doc__ or DEAD_LETTER_TYPE).strip().splitlines()[0]
    messages[dead] = _message(DEAD_LETTER_TYPE, names[DeadLetter.__name__], False, summary)
    address = dead_key("{queue}")
    channels[dead] = _channel(address, dead, "Dead letters, by source queue.", namespace)
    channels[dead]["parameters"] = {
        "queue": {
            "description": "The queue the message could not be handled on.",
            "enum": [f"{namespace}.{stage}" for stage in STAGES],
        }
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "plangate",
            "version": "1",
            "description": (
                f"plangate's message bus. Every message is JSON (`schema_version` 1) published to "
                f"the durable topic exchange `{namespace}` with its `type` as the routing key; "
                f"each stage consumes its own durable queue `{namespace}.<stage>`, and messages "
                f"that can never be handled go to `{namespace}.dead`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "Example: Redis through kombu's Redis transport.",
            },
            "amqp": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "Example: RabbitMQ.",
            },
        },
        "channels": channels,
        "operations": _operations(),
        "components": {
            "schemas": {
                **schemas,
                "Headers": HEADERS_SCHEMA,
                "PublisherHeaders": PUBLISHER_HEADERS_SCHEMA,
                "DeadLetterHeaders": DEAD_LETTER_HEADERS_SCHEMA,
            },
            "messages": messages,
        },
    }
