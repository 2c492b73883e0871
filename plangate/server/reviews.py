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
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from approval_gate.review import Review
from approval_gate.revisions import editable_steps
from approval_gate.settle import UnsettledStep, settle_step, unsettled_steps
from plangate.bus import Bus, Envelope
from plangate.catalog import load_catalog
from plangate.config import Settings
from plangate.errors import NotFound, quoted
from plangate.relay import deliver
from plangate.review_views import ReviewDetail, ReviewSummary, detail_of, summary_of
from plangate.server.api_docs import refusals
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
from plangate.server.json_bodies import documented_body
from plangate.server.query_params import token_first
from plangate.server.reviewers import Reviewer, require_reviewer
from plangate.stages import build_review
from plangate.store import PlanRow, Store, open_store
from plangate.store.goals import by_id, get_goal, latest_plan
from schemas import Catalog
from schemas.goal_status_schema import GoalStatus

# Every route is a reviewer's: the token is checked first, before its query and its body.
router = APIRouter(
    prefix="/api/v1/reviews", tags=["reviews"], dependencies=token_first(require_reviewer)
)


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
                unknown_since=body.unknown_since,
            )
        )
        deliver(self.store, self.bus, envelopes)
        return envelopes

    def goal_of(self, plan_id: str) -> str:
        """Return the goal a plan belongs to (NotFound if there is no such plan).

        `plan_id` may be a short id, as a person gives it.
        """
        with self.store.reading() as session:
            plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)
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


class CandidateKeyView(BaseModel):
    """A key a write claimed before 0015 may have been called with (its row keeps none)."""

    model_config = ConfigDict(from_attributes=True)

    key: str
    made_by: str = Field(description="The releases that made this key, named by commit.")


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
    goal_status: GoalStatus = Field(
        description="needs_attention (its run resumes once settled) or cancelled (recorded only)"
    )
    idempotency_key: str | None = Field(
        default=None,
        description="The key the write was called with, to ask the other system by (None if "
        "it cannot be made again: an output its arguments read is not recorded).",
    )
    args: dict[str, Any] | None = Field(
        default=None, description="The arguments it was called with (redacted, as in the log)."
    )
    candidate_keys: list[CandidateKeyView] = Field(
        default=[],
        description="Claimed before schema 0015, which records no key: each key a release "
        "could have called it with, this release's last (the one a call made again gets). "
        "Empty when `idempotency_key` is the key its claim recorded.",
    )


class Outcome(BaseModel):
    """What a decision did: the goal's state now and its newest revision."""

    goal_id: str
    status: GoalStatus = Field(description="The goal's state in the store as the answer is made.")
    reason: str | None = Field(default=None, description="Why the goal is in that state.")
    plan_id: str | None
    revision: int | None
    message: str


def outcome_of(desk: ReviewDesk, goal_id: str, message: str) -> Outcome:
    """Return the goal's state after a decision, and its newest revision."""
    with desk.store.snapshot() as session:
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
MORE_HELD = "X-Plangate-More-Held"
_MORE = "`true` when more plans are held than `limit`; `GET /api/v1/goals?state=held` pages."
_READ = refusals(401, 422)  # a parameter refused; no body, so none of a body's refusals


def _decision(path: str, body: type[BaseModel]) -> Callable[[_Route], _Route]:
    """Declare a decision's route: its answer, its errors and the body it reads."""
    responses = refusals(401, 403, 404, 409)  # a body's refusals come with it: `api_docs`
    return router.post(path, response_model=Outcome, responses=responses, **documented_body(body))


@router.get(
    "",
    response_model=list[ReviewSummary],
    responses={
        **_READ,
        200: {"headers": {MORE_HELD: {"schema": {"type": "string"}, "description": _MORE}}},
    },
)
def list_reviews(
    desk: Desk,
    reviewer: Person,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 200,
) -> list[ReviewSummary]:
    """Return the plan revisions waiting for a person, the `limit` oldest first.

    More held than `limit`: the header `X-Plangate-More-Held: true` says so (the answer alone
    could not tell an API client), and `GET /api/v1/goals?state=held` pages through them all.
    """
    catalog = desk.catalog()
    held = desk.review.held(limit + 1)
    if len(held) > limit:
        response.headers[MORE_HELD] = "true"
    return [summary_of(plan, catalog) for plan in held[:limit]]


@router.get("/unsettled", response_model=list[UnsettledView], responses=_READ)
def list_unsettled(desk: Desk, reviewer: Person) -> list[UnsettledView]:
    """Return the steps that may or may not have happened, each stopping its run."""
    return [UnsettledView.model_validate(step, from_attributes=True) for step in desk.unsettled()]


@router.get("/{plan_id}", response_model=ReviewDetail, responses={**_READ, **refusals(404)})
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
    """Say whether the unknown call you checked happened; once none is left, the run resumes.

    `unknown_since` names that call (422 without it). 409 if the step is not unknown, if its
    unknown call is another one now, or if its run is not waiting for a person.
    """
    envelopes = desk.settle(plan_id, step_id, reviewer, body)
    outcome = outcome_of(desk, desk.goal_of(plan_id), "")
    what = "happened" if body.happened else "did not happen (it runs again)"
    after = "the run resumes" if envelopes else "other steps still wait to be settled"
    if outcome.status == "cancelled":  # recorded only: nothing of a cancelled goal runs again
        what, after = what.removesuffix(" (it runs again)"), "its goal was cancelled"
    said = f"{reviewer.name} settled {step_id}: {what}; {after}"
    return outcome.model_copy(update={"message": said})
