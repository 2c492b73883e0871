"""The bodies `/api/v1/goals` answers with: a submission accepted, a goal's state, a page of goals.

And the one error body every route of the API answers with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schemas.goal_status_schema import GoalStatus


class GoalAccepted(BaseModel):
    """The answer to a submission: the goal (new, or the first one for the same key)."""

    goal_id: str
    status: GoalStatus
    trace_id: str | None
    duplicate: bool
    queued: bool = Field(
        default=False,
        description="This submission found the broker unreachable: the goal is stored, and "
        "a running worker sends it on once the broker is back. Said of the submission that "
        "stored the goal; a duplicate's is false (its `status` says where the goal stands).",
    )


class StepState(BaseModel):
    """One step of the latest plan: its status, output (or error) and duration."""

    step_id: str
    tool: str
    status: str
    output: Any = None
    error: str | None = None
    duration_ms: float | None = None
    attempt: int | None = None
    claimed_until: datetime | None = Field(
        default=None,
        description="A write being called: when its claim runs out (if its executor is gone, "
        "it is marked unknown then, for a person to settle).",
    )
    settled_by: str | None = Field(
        default=None,
        description="A write of unknown outcome this reviewer settled: found to have "
        "happened (succeeded: its output is what they gave), or, on a cancelled goal, not to "
        "have happened (skipped). It has no duration.",
    )
    args: dict[str, Any] | None = Field(
        default=None,
        description="What the plan calls it with, as planned: `${step.field}` references are "
        "not filled in (the audit log's step entries hold the arguments as called).",
    )


class RetryState(BaseModel):
    """A goal's last retry (`plangate goals retry`), as its audit entry records it."""

    by: str = Field(description="The reviewer who sent it back to the planner.")
    at: datetime
    from_state: GoalStatus = Field(description="The state it was retried from.")
    reason: str = Field(description='Why, as they said ("" if they gave no reason).')


class DecisionState(BaseModel):
    """The latest decision on the goal's latest plan: the policy's, or a person's."""

    action: str = Field(description="`approve`, `deny`, `hold`, `reject` or `edit`.")
    decided_by: str | None = Field(
        description="`policy` (the rule is in `rule`), `gate`, or the reviewer's name."
    )
    rule: str | None = Field(description="The policy rule that decided, if one did.")
    reason: str | None = Field(description="Why: the rule's reason, or the reviewer's comment.")
    policy_version: str | None = Field(description="The policy version the decision was made by.")
    decided_at: str | None = Field(description="When it was recorded (RFC 3339, UTC).")


class GoalState(BaseModel):
    """Where a goal stands: its state, its latest plan, the decision on it and its steps."""

    goal_id: str
    status: GoalStatus
    reason: str | None
    updated_at: datetime
    terminal: bool
    trace_id: str | None = None
    plan_id: str | None = None
    revision: int | None = None
    summary: str | None = None
    decision: DecisionState | None = None
    steps: dict[str, str] = Field(
        default={},
        description="The status of each step with a record of its run (of a cancelled goal, "
        "every step, as `results` shows it); `results` lists every step of the plan, those "
        "not begun too.",
    )
    results: list[StepState] = Field(
        default=[], description="Every step of the plan, in plan order, with its output."
    )
    submitted_by: str | None = Field(
        default=None, description="Who submitted it, as its submitter said (metadata)."
    )
    approvers: list[str] = Field(
        default=[],
        description="Who approved the plan: once released, those the gate counted and signed "
        "(`approvers_signed`); before, the approvals given so far, in turn, which the gate "
        "counts against the reviewers file as it releases the plan.",
    )
    approvers_signed: bool = Field(
        default=False, description="Whether `approvers` are those of the gate's signed approval."
    )
    planner: str | None = Field(
        default=None, description="Who made the latest revision: a planner, or `edit:<reviewer>`."
    )
    edit_comment: str | None = Field(
        default=None,
        description='Why its reviewer edited it ("" if they gave no reason); null unless edited.',
    )
    held_by: str | None = Field(
        default=None, description="The policy rule that held the latest revision, if one did."
    )
    summary_from_revision: int | None = Field(
        default=None,
        description="The earlier revision whose summary an edit kept unchanged, if one did: "
        "its words, not the editor's.",
    )
    catalog_problem: str | None = Field(
        default=None,
        description="Held: what of the plan no longer fits the tool catalog (a tool's "
        "arguments changed since); it cannot be approved as it is, only edited or rejected.",
    )
    approval_unchecked: str | None = Field(
        default=None,
        description="Approved: why an executor could not check the gate's approval (signed "
        "by a key not in its trusted keys folder); the goal waits until it can.",
    )
    retried: RetryState | None = Field(
        default=None,
        description="Its last retry (`plangate goals retry`): by whom, when, from which state, "
        "and why; its latest plan was made afresh after it.",
    )
    unsent_since: datetime | None = Field(
        default=None,
        description="Since when a message of it has been stored but not sent, if one has: the "
        "broker was away or refused the sender's settings; a running worker sends it on.",
    )


class ErrorBody(BaseModel):
    """Every error: what went wrong and what to do."""

    error: str


class GoalListItem(BaseModel):
    """One goal of the list."""

    goal_id: str
    status: GoalStatus
    text: str
    source: str | None
    created_at: datetime
    updated_at: datetime
    revision: int | None
    decided_by: str | None


class GoalList(BaseModel):
    """A page of goals, newest first; pass `next_cursor` as `cursor` for the next page."""

    goals: list[GoalListItem]
    next_cursor: str | None
