"""When a plan that will not run leads to a new revision: bounded, and only if asked for.

A reviewer's rejection (with its comment) or, when `PLANGATE_REPLAN_ON_FAILURE` is set, a
failed execution, makes the planner draft revision n+1 with that feedback, at most
`PLANGATE_REPLAN_LIMIT` times per goal. Only planners that take feedback (the LLM planner)
revise; with the playbook planner a rejection stands. `plangate run` asks `replan_expected`
to know whether to keep following a goal after a rejection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from plangate.config import Settings
from planner_worker.loading import planner_kind
from planner_worker.planner import Planner, RevisingPlanner

FeedbackSource = Literal["reviewer", "execution"]
log = logging.getLogger(__name__)


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


class UnheardFailures:
    """Says that `PLANGATE_REPLAN_ON_FAILURE` asks a planner that takes no feedback.

    The playbook planner cannot revise: a failed run stays failed. Said at the planner's
    start (a warning), and of the first failed run (info), then of each at debug: a tool
    that keeps failing must not fill the log.
    """

    def __init__(self, policy: ReplanPolicy, planner: Planner) -> None:
        self._planner = type(planner).__name__
        self._unheard = policy.on_failure and not isinstance(planner, RevisingPlanner)
        self._said = False
        if self._unheard:
            log.warning(
                "PLANGATE_REPLAN_ON_FAILURE is set, but this planner (%s) takes no feedback: "
                "a failed run is not planned again; use the LLM planner "
                "(PLANGATE_PLANNER=openai) or a planner of your own with a `revise` method, or "
                "unset PLANGATE_REPLAN_ON_FAILURE",
                self._planner,
            )

    def say(self, plan_id: str, source: FeedbackSource) -> None:
        """Log that the failed run of `plan_id` is not planned again (a rejection: nothing)."""
        if not self._unheard or source != "execution":
            return  # a rejection stands with the playbook planner, as the docs say
        level = logging.DEBUG if self._said else logging.INFO
        self._said = True
        log.log(
            level,
            "the failed run of plan %s is not planned again: this planner (%s) takes no "
            "feedback, whatever PLANGATE_REPLAN_ON_FAILURE says",
            plan_id,
            self._planner,
        )
