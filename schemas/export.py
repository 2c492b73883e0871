"""JSON Schema export of every message, the plan and the tool spec, for other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.messages import MESSAGE_MODELS, Approval, DeadLetter, PlanDecided, SignedEnvelope
from schemas.plan import Plan
from schemas.routing import DEAD_LETTER_TYPE, ROUTES, check_routes
from schemas.tool_spec import ToolSpec

_CONTRACT: dict[str, type[BaseModel]] = {
    # The model the four decisions share (plan.held, .denied, .rejected, .expired), as written
    # before each had its own file.
    "plan.decided": PlanDecided,
    DEAD_LETTER_TYPE: DeadLetter,
    "approval": Approval,
    "signed-envelope": SignedEnvelope,
    "plan": Plan,
    "tool-spec": ToolSpec,
}


def exported() -> dict[str, type[BaseModel]]:
    """Return what is exported, by file name: every routed message type, then the rest."""
    check_routes(MESSAGE_MODELS)
    messages: dict[str, type[BaseModel]] = {t: MESSAGE_MODELS[t] for t in ROUTES}
    return {**messages, **_CONTRACT}


EXPORTED: dict[str, type[BaseModel]] = exported()
"""File name (a message type, or a part of the contract) to the model written there."""


ENVELOPE_FIELDS = ("schema_version", "type")
"""Defaulted in Python, yet `decode_message` refuses a message without them: so required."""


def _require_envelope_fields(schema: dict[str, Any]) -> None:
    required: list[str] = schema.setdefault("required", [])
    for name in ENVELOPE_FIELDS:
        if name in schema.get("properties", {}) and name not in required:
            required.append(name)


def _pin_type(schema: dict[str, Any], message_type: str) -> None:
    """Allow only this file's type where a model is shared by several (`plan.held`, ...)."""
    field: dict[str, Any] = schema["properties"]["type"]
    field.pop("enum", None)
    field["const"] = message_type


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one `<name>.schema.json` per exported model into `directory`; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in exported().items():
        schema = model.model_json_schema()
        _require_envelope_fields(schema)
        if name in ROUTES:
            _pin_type(schema, name)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://plangate.dev/schemas/{name}.schema.json"
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
