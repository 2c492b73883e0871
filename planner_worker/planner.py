"""What a planner is: something that drafts steps for a goal from the tool catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from schemas import Catalog, GoalSubmitted, Plan, Step
from schemas.messages import TokenUsage


@dataclass(frozen=True)
class Draft:
    """A planner's proposal before it is numbered, hashed and validated."""

    summary: str
    steps: tuple[Step, ...]
    planner: str
    model: str | None = None
    usage: TokenUsage | None = None


@dataclass(frozen=True)
class Feedback:
    """Why the newest revision will not run, for the planner to do better in the next one."""

    previous: Plan
    comment: str
    source: Literal["reviewer", "execution"]
    tokens_spent: int = 0
    """LLM tokens the goal has used so far, counted against its budget."""


class Planner(Protocol):
    """Drafts a plan for a goal; raises PlanningFailed when it cannot."""

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        """Return a draft plan for `goal` using only tools of `catalog`."""
        ...


@runtime_checkable
class RevisingPlanner(Planner, Protocol):
    """A planner that can also revise a plan from feedback (the playbook planner cannot)."""

    def revise(self, goal: GoalSubmitted, catalog: Catalog, feedback: Feedback) -> Draft:
        """Return a new draft for `goal` that answers `feedback` on the previous revision."""
        ...
