"""The plan: data, never code. A list of steps, each calling one catalog tool."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.identifiers import Identifier

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class Step(BaseModel):
    """One tool call. `args` may refer to earlier outputs as `${id}` or `${id.field}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=STEP_ID_PATTERN)
    tool: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    when: str | None = Field(
        default=None, description="CEL over `steps.<id>.output`; the step is skipped when false."
    )
    after: tuple[str, ...] = Field(default=(), description="Explicit extra dependencies.")


class Plan(BaseModel):
    """A whole plan, one revision of it. Its canonical hash is what an approval signs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: Identifier
    goal_id: Identifier
    revision: int = Field(ge=1)
    summary: str = Field(default="", max_length=2000)
    steps: tuple[Step, ...]

    def step(self, step_id: str) -> Step:
        """Return the step with this id; KeyError if the plan has none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)
