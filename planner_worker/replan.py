"""When a plan that will not run leads to a new revision: bounded, and only if asked for.

A reviewer's rejection (with its comment) or, when `PLANGATE_REPLAN_ON_FAILURE` is set, a
failed execution, makes the planner draft revision n+1 with that feedback, at most
`PLANGATE_REPLAN_LIMIT` times per goal. Only planners that take feedback (the LLM planner)
revise; with the playbook planner a rejection stands. `plangate run` asks `replan_expected`
to know whether to keep following a goal after a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from plangate.config import Settings
from planner_worker.loading import planner_kind

FeedbackSource = Literal["reviewer", "execution"]


@dataclass(frozen=True)
class ReplanPolicy:
    """How many revisions feedback may cause, and which feedback counts."""

    limit: int = 0
    on_failure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplanPolicy:
        """Return the policy set by `PLANGATE_REPLAN_LIMIT` and `PLANGATE_REPLAN_ON_FAILURE`."""
        return cls(limit=settings.replan_limit, on_failure=settings.replan_on_failure)

    def allows(self, revision: int, source: FeedbackSource) -> bool:
        """Whether feedback on `revision` may lead to revision + 1."""
        if source == "execution" and not self.on_failure:
            return False
        return revision <= self.limit  # revision n is the (n-1)th replan; n+1 would be the nth


def replan_expected(settings: Settings, revision: int, source: FeedbackSource) -> bool:
    """Whether the configured planner will revise after feedback on `revision`."""
    policy = ReplanPolicy.from_settings(settings)
    return planner_kind(settings) == "openai" and policy.allows(revision, source)
