"""JSON Schema export of every message, the plan and the tool spec, for other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.messages import (
    Approval,
    DeadLetter,
    ExecutionCompleted,
    ExecutionFailed,
    GoalSubmitted,
    PlanApproved,
    PlanDecided,
    PlanFailed,
    PlanProposed,
    SignedEnvelope,
    StepFinished,
)
from schemas.plan import Plan
from schemas.tool_spec import ToolSpec

EXPORTED: dict[str, type[BaseModel]] = {
    "goal.submitted": GoalSubmitted,
    "plan.proposed": PlanProposed,
    "plan.failed": PlanFailed,
    "plan.decided": PlanDecided,
    "plan.approved": PlanApproved,
    "step.finished": StepFinished,
    "execution.completed": ExecutionCompleted,
    "execution.failed": ExecutionFailed,
    "dead.letter": DeadLetter,
    "approval": Approval,
    "signed-envelope": SignedEnvelope,
    "plan": Plan,
    "tool-spec": ToolSpec,
}


ENVELOPE_FIELDS = ("schema_version", "type")
"""Defaulted in Python, yet `decode_message` refuses a message without them: so required."""


def _require_envelope_fields(schema: dict[str, Any]) -> None:
    required: list[str] = schema.setdefault("required", [])
    for name in ENVELOPE_FIELDS:
        if name in schema.get("properties", {}) and name not in required:
            required.append(name)


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one `<name>.schema.json` per exported model into `directory`; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EXPORTED.items():
        schema = model.model_json_schema()
        _require_envelope_fields(schema)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://plangate.dev/schemas/{name}.schema.json"
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
