"""Planners of your own: the protocol a planner implements, and what it builds a draft from.

`Pipeline(settings, planner=...)` plans with any object that has the `Planner` protocol's
`draft(goal, catalog)`; one that also has `RevisingPlanner`'s `revise` makes the next revision
after a reviewer's rejection or a failed run. A draft is validated, hashed and decided as any
plan; `PlanningFailed(reasons)` fails the goal with those reasons. Names re-exported from the
planner stage and the schemas, so that a planner needs this module alone.
"""

from plangate.errors import PlanningFailed
from planner_worker.planner import Draft, Feedback, Planner, RevisingPlanner
from schemas import Catalog, GoalSubmitted, Plan, Step, ToolSpec

__all__ = [
    "Catalog",
    "Draft",
    "Feedback",
    "GoalSubmitted",
    "Plan",
    "Planner",
    "PlanningFailed",
    "RevisingPlanner",
    "Step",
    "ToolSpec",
]
