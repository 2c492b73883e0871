"""A held plan as a reviewer reads it: the revision, the goal, the hold and how far it is.

Read by `approval_gate.review` for the list, the page, the API and the CLI alike
(`plangate.review_views` shapes it for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from approval_gate.approvals import approvals_required, counted_approvers, progress
from approval_gate.approvers import ApproverCheck
from approval_gate.eligible import release_shortfall
from approval_gate.expiry import expires_at
from approval_gate.holds import hold_of, release_bar, required_roles, revision_editors
from plangate.errors import NotFound
from plangate.store import DecisionRow, GoalRow, HoldRow, PlanPreviewRow, PlanRow
from plangate.store.goals import latest_plan
from plangate.store.plan_decided import Decided, decided_of, decisions_of
from plangate.store.plan_edits import PlanEdit, edit_of, summary_written_in
from schemas import StepPreview


@dataclass(frozen=True)
class HeldPlan:
    """A plan revision waiting for a person, with what the policy said of it."""

    plan: PlanRow
    goal: GoalRow
    policy_decision: DecisionRow | None
    previous: PlanRow | None = None  # the revision before, for a diff
    required_role: str | None = None  # the role(s) the hold asks of a reviewer, comma-separated
    expires_at: datetime | None = None  # when a held plan expires if nobody decides
    preview: list[StepPreview] | None = None  # its dry run, once an executor has made it
    preview_requested: bool = False  # the rule that held it asked an executor for a dry run
    hold: HoldRow | None = None  # what a decision needs, as the gate recorded it
    approvers: tuple[str, ...] = ()  # who approved this revision so far (of several needed)
    authors: tuple[str, ...] = ()  # who edited it or an edit it builds on: none may approve it
    # Why it can never be released (an unsealed hold, too few reviewers left), if so.
    cannot_be_released: str | None = None
    edit: PlanEdit | None = None  # who made this revision by an edit, and why
    summary_from: int | None = None  # the earlier revision whose summary an edit kept
    waiting: bool = False  # the revision a person is asked to decide now (its goal held)
    newest: PlanRow | None = None  # the goal's newest revision: another replaced this one
    decided: Decided | None = None  # how a person (or the expiry) decided it, if one did
    # Who approved it before 0014 gave approvals token proofs: kept, but never counted.
    unproven: tuple[str, ...] = ()

    @property
    def held_since(self) -> datetime:
        """When the gate held this revision (the goal's last move, for one held before holds)."""
        if self.hold is not None:
            return self.hold.created_at
        decision = self.policy_decision
        if decision is not None and decision.action == "hold":
            return decision.created_at
        return self.goal.updated_at

    @property
    def replaced_by(self) -> PlanRow | None:
        """The newer revision that replaced this one (an edit, or planning again), if any."""
        if self.newest is None or self.newest.plan_id == self.plan.plan_id:
            return None
        return self.newest

    @property
    def roles_required(self) -> frozenset[str]:
        """The roles a reviewer must hold, all of them, to decide it."""
        return required_roles(self.hold) if self.hold is not None else frozenset()

    @property
    def approvals_required(self) -> int:
        """How many distinct reviewers must approve this revision (1 unless a rule says)."""
        return approvals_required(self.hold)

    @property
    def approval_progress(self) -> str:
        """How far its approval is, as people read it: "1 of 2 approvals (alice)".

        An approval recorded before the upgrade to 0014 is named as not counted: "0 of 2"
        alone read as if alice had never approved, and she did not know to approve again.
        """
        said = progress(list(self.approvers), self.approvals_required)
        if self.unproven:
            said += (
                f"; {', '.join(self.unproven)} approved before the upgrade: not counted "
                "(no token proof); approve again"
            )
        return said

    @property
    def preview_state(self) -> str:
        """`ready` (a dry run is stored), `waiting` (asked, not made yet) or `none`."""
        if self.preview is not None:
            return "ready"
        return "waiting" if self.preview_requested else "none"


def read_held(
    session: Session,
    goal: GoalRow,
    plan: PlanRow | None,
    hold_ttl: timedelta,
    check: ApproverCheck,
) -> HeldPlan:
    """Return `plan` (default: the goal's newest revision) with what a reviewer needs.

    `hold_ttl`: when a plan held before holds were recorded expires; `check`: whose approvals
    count, and who the reviewers are, as the gate has them.
    """
    newest = latest_plan(session, goal.id)
    plan = plan or newest
    if plan is None:
        raise NotFound(f"goal {goal.id} has no plan")
    decisions = decisions_of(session, plan.plan_id)
    policy, person = decisions.get("policy"), decisions.get("human")
    previous = None
    if plan.revision > 1:
        previous = session.execute(
            select(PlanRow).where(PlanRow.goal_id == goal.id, PlanRow.revision == plan.revision - 1)
        ).scalar_one_or_none()
    hold = hold_of(session, plan.plan_id)
    role = None
    if hold is not None and hold.required_roles:
        role = ", ".join(sorted(required_roles(hold)))
    expiry = None
    if policy is not None and policy.action == "hold" and goal.status == "held":
        expiry = expires_at(session, policy, hold_ttl)
    stored = session.get(PlanPreviewRow, plan.plan_id)
    preview = None
    if stored is not None and stored.steps is not None:
        preview = [StepPreview.model_validate(step) for step in stored.steps]
    counted, refused = counted_approvers(session, plan, hold, check)
    approvers = tuple(counted)
    # Only where approvals need a proof (a reviewers file): the embedded mode records none.
    proven = check.known() is not None
    unproven = tuple(row.reviewer for row, _ in refused if proven and row.proof is None)
    # An older revision, or one decided already, waits for nobody.
    waiting = goal.status == "held" and newest is not None and newest.plan_id == plan.plan_id
    stuck = _stuck(session, plan, hold, goal, approvers, check) if waiting else None
    return HeldPlan(
        plan,
        goal,
        policy,
        previous,
        role,
        expiry,
        preview,
        stored is not None,
        hold,
        approvers,
        tuple(sorted(revision_editors(session, plan))),
        stuck,
        edit_of(session, plan),
        summary_written_in(session, plan),
        waiting,
        newest,
        None if person is None else decided_of(session, plan, person),
        unproven,
    )


def _stuck(
    session: Session,
    plan: PlanRow,
    hold: HoldRow | None,
    goal: GoalRow,
    approvers: tuple[str, ...],
    check: ApproverCheck,
) -> str | None:
    """Say why the revision cannot be released: its hold, or too few reviewers left for it."""
    if (bar := release_bar(hold)) is not None:  # whoever approves: said before anyone does
        return bar
    reviewers = check.known()
    # The embedded mode: any name may approve. No hold: nobody may, `check_reviewer` says why.
    if reviewers is None or hold is None:
        return None
    return release_shortfall(session, plan, hold, goal, approvers, reviewers)
