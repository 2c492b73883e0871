"""What a planner is: something that drafts steps for a goal from the tool catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas import Catalog, GoalSubmitted, Step


@dataclass(frozen=True)
class Draft:
    """A planner's proposal before it is numbered, hashed and validated."""

    summary: str
    steps: tuple[Step, ...]
    planner: str


class Planner(Protocol):
    """Drafts a plan for a goal; raises PlanningFailed when it cannot."""

    def draft(self, goal: GoalSubmitted, catalog: Catalog) -> Draft:
        """Return a draft plan for `goal` using only tools of `catalog`."""
        ...
