"""The shape an LLM must answer in: a strict JSON schema built from the live tool catalog.

A step is a union with one variant per tool: `tool` is that tool's name as a constant and
`args` is that tool's argument schema made strict, so the model server itself enforces each
tool's arguments while generating. Lists and strings are capped: without caps a model can
ramble until `max_tokens`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner_worker.strict_schema import (
    JsonSchema,
    capped_string,
    drop_nulls,
    strict,
    strict_defs,
)
from schemas import Catalog, Step, ToolSpec
from schemas.decoding import JsonRefused, strict_json_loads

SCHEMA_NAME = "plangate_plan"
MAX_STEPS = 20  # well under the validator's 50: a model that needs more is rambling
MAX_SUMMARY_CHARS = 200
MAX_CONDITION_CHARS = 300
MAX_AFTER = 5
# Tighter than the plan's own 64 characters: the shorter the caps, the less room to ramble.
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,31}$"


class AnswerInvalid(Exception):
    """The model's answer is not a plan of the expected shape; `problems` says why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def response_format(catalog: Catalog) -> dict[str, Any]:
    """Return the chat completions `response_format` asking for a strict plan schema."""
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": plan_schema(catalog)},
    }


def plan_schema(catalog: Catalog) -> JsonSchema:
    """Return the strict JSON schema of a plan over the tools of `catalog`."""
    specs = [catalog[name] for name in sorted(catalog)]  # sorted: one catalog, one schema
    schema: JsonSchema = {
        "type": "object",
        "properties": {
            "summary": capped_string(MAX_SUMMARY_CHARS),
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_STEPS,
                "items": {"anyOf": [_step_variant(spec) for spec in specs]},
            },
        },
        "required": ["summary", "steps"],
        "additionalProperties": False,
    }
    defs = {k: v for spec in specs for k, v in strict_defs(spec.args_schema, _prefix(spec)).items()}
    if defs:
        schema["$defs"] = defs
    return schema


def _prefix(spec: ToolSpec) -> str:
    return f"{spec.name}__"  # tools may each define a `$defs/Item`: keep them apart


def _step_variant(spec: ToolSpec) -> JsonSchema:
    step_id = {"type": "string", "pattern": STEP_ID_PATTERN}
    args = strict({k: v for k, v in spec.args_schema.items() if k != "$defs"}, _prefix(spec))
    when = capped_string(MAX_CONDITION_CHARS)
    return {
        "type": "object",
        "properties": {
            "id": step_id,
            "tool": {"type": "string", "const": spec.name},
            "args": args,
            "when": {**when, "type": ["string", "null"]},
            "after": {"type": "array", "items": step_id, "maxItems": MAX_AFTER},
        },
        "required": ["id", "tool", "args", "when", "after"],
        "additionalProperties": False,
    }


class _AnswerStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    when: str | None = None
    after: list[str] | None = None


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = ""
    steps: list[_AnswerStep]


def read_answer(content: str | None, catalog: Catalog) -> tuple[str, tuple[Step, ...]]:
    """Return (summary, steps) from a model's answer; AnswerInvalid when it is not a plan.

    Servers without strict mode may answer anything, so the shape is checked here again; the
    JSON is read within the one reader's bounds (size, nesting depth, encodable text).
    """
    if not content or not content.strip():
        raise AnswerInvalid(["the answer was empty; answer with one JSON plan"])
    try:
        answer = _Answer.model_validate(strict_json_loads(content))
    except JsonRefused as exc:
        what = "is not JSON" if exc.problem == "syntax" else "cannot be read"
        raise AnswerInvalid([f"the answer {what} ({exc}); answer with one JSON plan"]) from None
    except ValidationError as exc:
        raise AnswerInvalid([_shape_problem(e) for e in exc.errors()]) from exc
    steps = []
    problems = []
    for index, item in enumerate(answer.steps):
        spec = catalog.get(item.tool)
        args = drop_nulls(item.args, spec.args_schema) if spec else item.args
        try:
            steps.append(
                Step(
                    id=item.id,
                    tool=item.tool,
                    args=args,
                    when=item.when or None,
                    after=tuple(item.after or ()),
                )
            )
        except ValidationError as exc:
            problems += [f"steps[{index}]: {_shape_problem(e)}" for e in exc.errors()]
    if problems:
        raise AnswerInvalid(problems)
    return answer.summary[:MAX_SUMMARY_CHARS], tuple(steps)


def _shape_problem(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "answer"
    if error.get("type") == "model_type":  # pydantic names the class: "instance of _Answer"
        return f"{where}: must be a JSON object"
    return f"{where}: {error.get('msg', 'invalid')}"
