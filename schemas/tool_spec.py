"""What the planner and the policy know of a tool: its spec, never its callable."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Effect = Literal["read", "write"]

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


Catalog = dict[str, ToolSpec]
"""The tools a plan may use, by name."""
