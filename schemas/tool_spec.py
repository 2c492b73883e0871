"""What the planner and the policy know of a tool: its spec, never its callable."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.json_schema import check_schema

Effect = Literal["read", "write"]
Trust = Literal["trusted", "untrusted"]

TOOL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"


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
            check_schema(schema)
        return schema


Catalog = dict[str, ToolSpec]
"""The tools a plan may use, by name."""
