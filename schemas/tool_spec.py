"""What the planner and the policy know of a tool: its spec, never its callable."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.decoding import JsonRefused, check_json_value

Effect = Literal["read", "write"]
Trust = Literal["trusted", "untrusted"]

TOOL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
MAX_SCHEMA_DEPTH = 32
"""How deep a tool's argument or output schema may nest: far past any real one."""
MAX_SCHEMA_CHARS = 64 * 1024
"""How much JSON one schema may take: it travels in every plan prompt and catalog message."""


class ToolSpec(BaseModel):
    """A tool as the catalog describes it: name, purpose, argument schema, output and effect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = ""
    args_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the tool's arguments (an object).",
    )
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the tool's output, when known."
    )
    effect: Effect = Field(description="`read` has no side effect; `write` changes the world.")
    idempotent: bool = False
    tags: tuple[str, ...] = ()
    output_trust: Trust = Field(
        default="untrusted",
        description="`untrusted`: the output may carry text from outside (a ticket's body, an "
        "email, a web page) that must not steer a write unseen; `trusted`: the tool vouches "
        "for it (a count, an id it made).",
    )

    @field_validator("args_schema", "output_schema")
    @classmethod
    def _is_a_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked here, once, so a broken schema (say, from an MCP server) stops the executor
        # that offers it, rather than every plan validation that would meet it.
        if schema is not None:
            _check_bounds(schema)
            try:
                # By the draft the schema names (`$schema`); 2020-12 when it names none.
                validator = jsonschema.validators.validator_for(
                    schema, default=jsonschema.Draft202012Validator
                )
                validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(part) for part in exc.path) or "the top level"
                raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return schema


def _check_bounds(schema: dict[str, Any]) -> None:
    """Refuse a schema too deep or too large for the readers that recurse and the prompt."""
    try:
        check_json_value(schema, max_depth=MAX_SCHEMA_DEPTH)
    except JsonRefused as exc:
        raise ValueError(f"the schema: {exc}") from None
    size = len(json.dumps(schema, ensure_ascii=False, default=str))
    if size > MAX_SCHEMA_CHARS:
        raise ValueError(
            f"the schema is {size} characters of JSON; the limit is {MAX_SCHEMA_CHARS}: "
            "describe the arguments more briefly"
        )


Catalog = dict[str, ToolSpec]
"""The tools a plan may use, by name."""
