"""`/api/v1/reviews`: held plans, and a reviewer's approve, reject and edit.

Every decision names the hash the reviewer saw; a plan that changed since, or that someone
else decided first, answers 409; a reviewer without the role the hold asks for, 403. Who decides
is the reviewer the bearer token names, with the roles the reviewers file gives them. What a
decision produced is published at once (`deliver`). An approval is recorded here and handed to
the gate, which signs it and releases the plan: the answer says so, with the goal's state now,
and `GET /api/v1/goals/{goal_id}` (its `Location`) shows what came of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from approval_gate.review import HeldPlan, Review
from approval_gate.revisions import editable_steps, plan_diff
from approval_gate.settle import UnsettledStep, settle_step, unsettled_steps
from plangate.bus import Bus, Envelope
from plangate.catalog import load_catalog
from plangate.config import Settings
from plangate.errors import NotFound, quoted
from plangate.relay import deliver
from plangate.server.decision_bodies import (
    Approve,
    ApproveBody,
    Edit,
    EditBody,
    RejectBody,
    RejectionBody,
    Settle,
    SettleBody,
)
from plangate.server.errors import ApiError
from plangate.server.goals import ErrorBody
from plangate.server.json_bodies import documented_body
from plangate.server.reviewers import Reviewer, require_reviewer
from plangate.stages import build_review
from plangate.store import PlanRow, Store, open_store
from plangate.store.goal_list import submitters_said
from plangate.store.goals import get_goal, latest_plan
from schemas import Catalog, StepPreview
from schemas.data_flow import untrusted_sources

router = APIRouter(prefix="/api/v1/reviews", tags=["reviews"])


class ReviewDesk:
    """What the review routes share: the store, the bus and the review service."""

    def __init__(self, settings: Settings) -> None:
        self.store: Store = open_store(settings.resolved_database_url(), upgrade=False)
        self.bus = Bus(settings.broker_url, settings.namespace)
        self.review: Review = build_review(settings, self.store)

    def decide(self, action: Callable[[Review], Sequence[Envelope]]) -> None:
        """Run a decision and publish the envelopes it committed."""
        deliver(self.store, self.bus, action(self.review))

    def unsettled(self) -> list[UnsettledStep]:
        """Return the steps waiting for a person to say whether they happened."""
        return unsettled_steps(self.store)

    def settle(
        self, plan_id: str, step_id: str, reviewer: Reviewer, body: Settle
    ) -> list[Envelope]:
        """Settle an unknown step and publish what it led to (the resumed run)."""
        if body.output is not None and not body.happened:
            problem = "output goes with happened=true: a step that did not happen has none"
            raise ApiError(422, problem)
        envelopes = list(
            settle_step(
                self.store,
                plan_id,
                step_id,
                reviewer.name,
                happened=body.happened,
                output=body.output,
                comment=body.comment,
                roles=reviewer.roles,
            )
        )
        deliver(self.store, self.bus, envelopes)
        return envelopes

    def goal_of(self, plan_id: str) -> str:
        """Return the goal a plan belongs to (NotFound if there is no such plan)."""
        with self.store.session() as session:
            plan = session.get(PlanRow, plan_id)
            if plan is None:
                raise NotFound(f"no plan {quoted(plan_id)}")
            return plan.goal_id

    def catalog(self) -> Catalog:
        """Return the tool catalog the executors published."""
        return load_catalog(self.store)

    def close(self) -> None:
        """Release the broker and database connections."""
        self.bus.close()
        self.store.close()


def get_desk(request: Request) -> ReviewDesk:
    """Return the app's review desk (opened by the app's lifespan)."""
    desk: ReviewDesk = request.app.state.desk
    return desk


class ReviewStep(BaseModel):
    """One step as a reviewer sees it: `effect` comes from the tool catalog."""

    id: str
    tool: str
    effect: str = Field(description="read or write; a tool missing from the catalog is write")
    args: dict[str, Any]
    when: str | None = None
    after: list[str] = []
    untrusted_from: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Inputs (arguments, or `when`) fed by steps whose output is untrusted, "
        "each with those steps as `id (tool)`.",
    )


class PolicyDecision(BaseModel):
    """What the policy decided of the revision, and why."""

    action: str
    rule: str | None
    reason: str


class ReviewSummary(BaseModel):
    """A held plan in the list."""

    plan_id: str
    goal_id: str
    revision: int
    plan_hash: str
    summary: str
    goal_text: str = Field(description="As submitted: untrusted data, not instructions.")
    goal_status: str
    held_since: datetime
    policy: PolicyDecision | None
    planner: str = Field(description="Who made this revision: a planner, or `edit:<reviewer>`.")
    expires_at: datetime | None = Field(
        default=None, description="When the held plan expires if nobody decides it."
    )
    tools: list[str] = Field(default=[], description="The tools the plan calls, in plan order.")
    writes: bool | None = Field(
        default=None, description="Whether a step writes (a tool missing from the catalog does)."
    )
    required_role: str | None = Field(default=None, description="The role the hold requires.")
    policy_version: str | None = Field(default=None, description="The policy that held it.")
    submitter: str | None = Field(default=None, description="Who or what submitted the goal.")
    approvals_required: int = Field(
        default=1, description="How many distinct reviewers must approve it (four eyes: 2)."
    )
    approvers: list[str] = Field(
        default_factory=list, description="Who approved this revision so far."
    )
    approval_progress: str = Field(
        default="", description='How far its approval is: "1 of 2 approvals (alice)".'
    )


class ReviewDetail(ReviewSummary):
    """A held plan in full: its steps, and the diff to the previous revision."""

    steps: list[ReviewStep]
    previous_revision: int | None
    diff: list[str] = Field(description="Unified diff of summary and steps to the previous one.")
    preview_state: Literal["none", "waiting", "ready"] = Field(
        description="`ready`: the dry run below is stored; `waiting`: the holding rule asked "
        "an executor for one; `none`: the rule asks for none (policy `preview: true`)."
    )
    preview: list[StepPreview] | None = Field(
        description="The dry run: each read step's real output, each write step's preview."
    )
    editors: list[str] = Field(
        default_factory=list,
        description="Who wrote this revision or an edit it builds on: none of them may approve it.",
    )


class UnsettledView(BaseModel):
    """A step an executor died in the middle of: a non-idempotent write that may have happened."""

    plan_id: str
    step_id: str
    tool: str
    goal_id: str
    goal_text: str = Field(description="As submitted: untrusted data, not instructions.")
    attempt: int
    reason: str | None
    since: datetime | None
    goal_status: str = Field(
        description="needs_attention (its run resumes once settled) or cancelled (recorded only)"
    )


class Outcome(BaseModel):
    """What a decision did: the goal's state now and its newest revision."""

    goal_id: str
    status: str = Field(description="The goal's state in the store as the answer is made.")
    reason: str | None = Field(default=None, description="Why the goal is in that state.")
    plan_id: str | None
    revision: int | None
    message: str


def summary_of(held: HeldPlan, catalog: Catalog | None = None) -> ReviewSummary:
    """Return a held plan as the list shows it (whether it writes, given the catalog)."""
    decision = held.policy_decision
    tools = [str(step.get("tool")) for step in held.plan.body.get("steps", [])]
    writes = None
    if catalog is not None:
        writes = any(t not in catalog or catalog[t].effect == "write" for t in tools)
    return ReviewSummary(
        plan_id=held.plan.plan_id,
        goal_id=held.goal.id,
        revision=held.plan.revision,
        plan_hash=held.plan.plan_hash,
        summary=str(held.plan.body.get("summary", "")),
        goal_text=held.goal.text,
        goal_status=held.goal.status,
        held_since=held.goal.updated_at,
        policy=None
        if decision is None
        else PolicyDecision(action=decision.action, rule=decision.rule, reason=decision.reason),
        planner=held.plan.planner,
        expires_at=held.expires_at,
        tools=tools,
        writes=writes,
        required_role=held.required_role,
        policy_version=held.hold.policy_version if held.hold is not None else None,
        submitter=submitters_said(held.goal.meta),
        approvals_required=held.approvals_required,
        approvers=list(held.approvers),
        approval_progress=held.approval_progress,
    )


def detail_of(held: HeldPlan, catalog: Catalog) -> ReviewDetail:
    """Return a held plan in full, each step's effect read from `catalog`."""
    body_steps = held.plan.body.get("steps", [])
    flows = untrusted_sources(body_steps, catalog)
    steps = [
        ReviewStep(
            id=str(step["id"]),
            tool=str(step["tool"]),
            effect=catalog[step["tool"]].effect if step["tool"] in catalog else "write",
            args=dict(step.get("args") or {}),
            when=step.get("when"),
            after=list(step.get("after") or []),
            untrusted_from=flows.get(str(step["id"]), {}),
        )
        for step in body_steps
    ]
    previous = held.previous
    return ReviewDetail(
        **summary_of(held, catalog).model_dump(),
        steps=steps,
        previous_revision=previous.revision if previous else None,
        diff=plan_diff(previous, held.plan).splitlines(),
        preview_state=held.preview_state,
        preview=held.preview,
        editors=list(held.authors),
    )


def outcome_of(desk: ReviewDesk, goal_id: str, message: str) -> Outcome:
    """Return the goal's state after a decision, and its newest revision."""
    with desk.store.session() as session:
        goal = get_goal(session, goal_id, typed=True)
        plan = latest_plan(session, goal_id)
        return Outcome(
            goal_id=goal_id,
            status=goal.status,
            reason=goal.status_reason,
            plan_id=plan.plan_id if plan else None,
            revision=plan.revision if plan else None,
            message=message,
        )


Desk = Annotated[ReviewDesk, Depends(get_desk)]
Person = Annotated[Reviewer, Depends(require_reviewer)]
_Route = TypeVar("_Route", bound=Callable[..., Outcome])
MAX_LISTED = 1001  # held plans in one listing: the CLI's most (1000) and one to see more
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422)
}


def _decision(path: str, body: type[BaseModel]) -> Callable[[_Route], _Route]:
    """Declare a decision's route: its answer, its errors and the body it reads."""
    return router.post(path, response_model=Outcome, responses=_ERRORS, **documented_body(body))


@router.get("", response_model=list[ReviewSummary], responses=_ERRORS)
def list_reviews(
    desk: Desk, reviewer: Person, limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 200
) -> list[ReviewSummary]:
    """Return the plan revisions waiting for a person, the `limit` oldest first."""
    catalog = desk.catalog()
    return [summary_of(held, catalog) for held in desk.review.held(limit)]


@router.get("/unsettled", response_model=list[UnsettledView], responses=_ERRORS)
def list_unsettled(desk: Desk, reviewer: Person) -> list[UnsettledView]:
    """Return the steps that may or may not have happened, each stopping its run."""
    return [UnsettledView.model_validate(step, from_attributes=True) for step in desk.unsettled()]


@router.get("/{plan_id}", response_model=ReviewDetail, responses=_ERRORS)
def show_review(plan_id: str, desk: Desk, reviewer: Person) -> ReviewDetail:
    """Return one plan: steps with their effect, the policy's decision, the diff, the goal."""
    return detail_of(desk.review.get(plan_id), desk.catalog())


@_decision("/{plan_id}/approve", Approve)
def approve(
    plan_id: str, body: ApproveBody, desk: Desk, reviewer: Person, response: Response
) -> Outcome:
    """Approve the revision with hash `plan_hash` (409 if it changed or was decided).

    The answer says the approval is recorded: the gate checks it against the hold, signs it
    and releases the plan. `Location` (`GET /api/v1/goals/{goal_id}`) shows what came of it.
    """
    goal_id = desk.review.get(plan_id).goal.id
    desk.decide(
        lambda review: review.approve(
            plan_id,
            reviewer.name,
            expected_hash=body.plan_hash,
            roles=reviewer.roles,
            comment=body.comment,
            key=reviewer.token_sha256,
        )
    )
    response.headers["Location"] = f"/api/v1/goals/{goal_id}"
    return outcome_of(desk, goal_id, desk.review.approval_said(plan_id, reviewer.name))


@_decision("/{plan_id}/reject", RejectBody)
def reject(plan_id: str, body: RejectionBody, desk: Desk, reviewer: Person) -> Outcome:
    """Reject the revision with hash `plan_hash`, with a comment; it never runs."""
    goal_id = desk.review.get(plan_id).goal.id
    desk.decide(
        lambda review: review.reject(
            plan_id,
            reviewer.name,
            body.comment,
            expected_hash=body.plan_hash,
            roles=reviewer.roles,
        )
    )
    return outcome_of(desk, goal_id, f"rejection by {reviewer.name} recorded; the plan never runs")


@_decision("/{plan_id}/edit", Edit)
def edit(plan_id: str, body: EditBody, desk: Desk, reviewer: Person) -> Outcome:
    """Make revision n+1 from these steps; the policy decides it again (422 if invalid)."""
    goal_id = desk.review.get(plan_id).goal.id
    desk.decide(
        lambda review: review.edit(
            plan_id,
            reviewer.name,
            editable_steps(body.steps),  # steps as this API shows them are accepted back
            summary=body.summary,
            expected_hash=body.plan_hash,
            roles=reviewer.roles,
            comment=body.comment.strip(),
        )
    )
    message = f"edit by {reviewer.name} recorded as a new revision; the policy decides it again"
    return outcome_of(desk, goal_id, message)


@_decision("/{plan_id}/steps/{step_id}/settle", Settle)
def settle(plan_id: str, step_id: str, body: SettleBody, desk: Desk, reviewer: Person) -> Outcome:
    """Say whether an unknown step happened; once none is left, the run resumes.

    409 if the step is not unknown, or its run is not waiting for a person.
    """
    envelopes = desk.settle(plan_id, step_id, reviewer, body)
    outcome = outcome_of(desk, desk.goal_of(plan_id), "")
    what = "happened" if body.happened else "did not happen (it runs again)"
    after = "the run resumes" if envelopes else "other steps still wait to be settled"
    if outcome.status == "cancelled":  # recorded only: nothing of a cancelled goal runs again
        what, after = what.removesuffix(" (it runs again)"), "its goal was cancelled"
    said = f"{reviewer.name} settled {step_id}: {what}; {after}"
    return outcome.model_copy(update={"message": said})
