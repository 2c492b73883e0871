"""Human review: list what is held, approve, reject or edit a revision, as a named reviewer.

A reviewer acts on the revision (and hash) they saw: if the plan changed since, or someone
else decided first, they get a Conflict, never a silent overwrite. What a decision needs is
the hold the gate recorded (a rule's `requires_role`): a reviewer without it gets Forbidden,
whatever policy file this process has. Nothing is signed here: an approval is recorded with
the reviewer, their roles and the proof of their token (`key`), and handed to the gate, which
checks them and the hold again, and signs.

An edit is a new revision (a new plan id and hash), proposed to the gate like a planner's: the
policy decides it again, and no approval of an earlier revision can cover it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approval_gate.approvals import (
    already_approved,
    approvals_required,
    count_approval,
    count_only,
    counted_approvers,
    progress,
    withdraw_void_approval,
)
from approval_gate.approvers import ApproverCheck, RecordedApprovers
from approval_gate.decisions import (
    follow_decision,
    hand_to_gate,
    person_recorded,
    record_decision,
)
from approval_gate.held_plan import HeldPlan as HeldPlan
from approval_gate.held_plan import read_held
from approval_gate.holds import (
    DEFAULT_HOLD_TTL,
    check_approver,
    check_open,
    check_releasable,
    check_reviewer,
)
from approval_gate.refusals import audits_refusals
from approval_gate.review_span import review_span
from approval_gate.revisions import catalog_misfit, edited_plan
from plangate.bus import Envelope
from plangate.catalog import load_catalog, read_catalog
from plangate.errors import (
    AlreadyApproved,
    Conflict,
    InputInvalid,
    NotFound,
    quoted,
)
from plangate.person_words import recorded_words
from plangate.store import GoalRow, PlanRow, Store, audit
from plangate.store.audit_recorded import edit_reason
from plangate.store.goals import by_id, latest_plan, plan_values, transition
from plangate.store.locks import PERSON_LOCK_WAIT_SECONDS, waiting_at_most
from plangate.store.models import EDIT_PREFIX
from plangate.store.outbox import emit
from schemas import (
    Catalog,
    Decision,
    PlanProposed,
    utcnow,
    validate_plan,
)
from schemas.hashing import written_plan_hash

log = logging.getLogger(__name__)


class Review:
    """Decisions by people on held plans, recorded and followed like policy decisions."""

    def __init__(
        self,
        store: Store,
        hold_ttl: timedelta = DEFAULT_HOLD_TTL,
        catalog: Catalog | None = None,
        approvers: ApproverCheck | None = None,
    ) -> None:
        self._store = store
        self._hold_ttl = hold_ttl  # for plans held before holds were recorded
        self._catalog = catalog  # an edit is validated against it (default: the store's)
        self._approvers = approvers or RecordedApprovers()  # which approvals count, as the gate

    def with_catalog(self, catalog: Catalog) -> Review:
        """Return this review validating edits against `catalog` (the tools a process loaded)."""
        return Review(self._store, self._hold_ttl, catalog, self._approvers)

    def held(self, limit: int | None = None) -> list[HeldPlan]:
        """Return the plan revisions waiting for a person, oldest first (`limit` at most).

        Read in a transaction that only reads, as `get`: in a writing one, every look at the
        review list held SQLite's write lock, every worker's, while it was made.
        """
        with self._store.snapshot() as session:
            query = select(GoalRow).where(GoalRow.status == "held").order_by(GoalRow.updated_at)
            goals = session.execute(query.limit(limit)).scalars()
            return [self._held(session, goal) for goal in goals]

    def get(self, plan_id: str) -> HeldPlan:
        """Return one held plan by id (NotFound if unknown)."""
        with self._store.snapshot() as session:
            plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)
            if plan is None:
                said = f"no plan {quoted(plan_id)}; `plangate review list` shows held plans"
                raise NotFound(said)
            return self._held(session, session.get_one(GoalRow, plan.goal_id), plan)

    def approval_said(self, plan_id: str, reviewer: str) -> str:
        """Return what an approval by `reviewer` led to, as the CLI and the API say it."""
        held = self.get(plan_id)
        if held.approvals_required > 1:
            left = held.approvals_required - len(held.approvers)
            if held.goal.status == "held" and left > 0:
                return (
                    f"approval by {reviewer} recorded: {held.approval_progress}; {left} more needed"
                )
            # The last of several (the gate may have released it already): said as far as the
            # first ones were ("2 of 2 approvals").
            return (
                f"approval by {reviewer} recorded: {held.approval_progress}; the gate signs "
                "it and releases the plan"
            )
        return f"approval by {reviewer} recorded; the gate signs it and releases the plan"

    @audits_refusals("approve")
    def approve(
        self,
        plan_id: str,
        reviewer: str,
        *,
        expected_hash: str | None = None,
        roles: frozenset[str] = frozenset(),
        comment: str = "",
        key: str = "",
    ) -> Sequence[Envelope]:
        """Approve a held revision; return plan.approved to publish. `key`: see `count_approval`."""
        comment = recorded_words(comment)
        # Their words only: none given is none recorded (it read "approved", as if typed).
        return self._decide(
            plan_id, reviewer, "approve", comment.strip(), expected_hash, roles, key
        )

    @audits_refusals("reject")
    def reject(
        self,
        plan_id: str,
        reviewer: str,
        comment: str,
        *,
        expected_hash: str | None = None,
        roles: frozenset[str] = frozenset(),
    ) -> Sequence[Envelope]:
        """Reject a held revision with a comment; return the envelopes to publish.

        InputInvalid if the comment is blank: the audit trail and the planner are told why.
        """
        if not comment.strip():
            raise InputInvalid("say why you reject the plan: a comment is required")
        comment = recorded_words(comment)
        return self._decide(plan_id, reviewer, "reject", comment.strip(), expected_hash, roles)

    @audits_refusals("edit")
    def edit(
        self,
        plan_id: str,
        reviewer: str,
        steps: list[dict[str, Any]],
        *,
        summary: str | None = None,
        expected_hash: str | None = None,
        roles: frozenset[str] = frozenset(),
        comment: str = "",
    ) -> Sequence[Envelope]:
        """Replace a held revision by the reviewer's edit, revision n+1, for the gate to decide.

        `comment` says why, in the record and the audit log. PlanInvalid if the edit is not a
        valid plan for the catalog; returns plan.proposed.
        """
        comment = recorded_words(comment)
        catalog = self._catalog if self._catalog is not None else load_catalog(self._store)
        with self._store.session() as session:
            held = self._held_for_decision(session, plan_id, expected_hash)
            check_reviewer(held.hold, plan_id, reviewer, roles, "edit")
            old = held.plan
            plan = edited_plan(old, steps, summary)
            validate_plan(plan, catalog)
            planner = f"{EDIT_PREFIX}{reviewer}"
            # The old revision's slot for a person's decision is taken by the edit, so an
            # approval racing this edit loses (or wins, and the edit gets the Conflict).
            replaced = Decision(
                action="reject",
                decided_by=reviewer,
                reason=edit_reason(plan.revision, comment),
                policy_version=_policy_version(held),
            )
            record_decision(session, old, "human", replaced, roles, counted_as="edit")
            row = PlanRow(**plan_values(plan, planner, old.trace_headers))
            digest = row.plan_hash
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError as exc:
                raise Conflict(
                    f"revision {plan.revision} of goal {plan.goal_id} exists already; reload it"
                ) from exc
            moved = {"plan_id": plan.plan_id, "revision": plan.revision, "plan_hash": digest}
            with review_span(held.goal, old, "edit", reviewer, comment) as span:
                span.set_attribute("plangate.edit.plan_id", plan.plan_id)
                span.set_attribute("plangate.edit.plan_hash", digest)
                edited = {"from_plan_id": old.plan_id, "from_plan_hash": old.plan_hash, **moved}
                edited["roles"] = sorted(roles)  # as the edit's decision row has them
                if comment:  # why, for an auditor reading the log alone
                    edited["comment"] = comment
                audit.append(
                    session, "plan.edited", actor=reviewer, goal_id=plan.goal_id, data=edited
                )
                transition(
                    session, plan.goal_id, "proposed", by="person", actor=reviewer, data=moved
                )
                proposal = PlanProposed(
                    goal_id=plan.goal_id, plan=plan, plan_hash=digest, planner=planner
                )
                # Carrying the edit's span: the new revision's decision reads under the edit
                # in the trace, as an approval's release does under the approval.
                return [emit(session, proposal)]

    def _held(self, session: Session, goal: GoalRow, plan: PlanRow | None = None) -> HeldPlan:
        """Return `plan` (default: the goal's newest revision) with what a reviewer needs."""
        return read_held(session, goal, plan, self._hold_ttl, self._approvers)

    def _decide(
        self,
        plan_id: str,
        reviewer: str,
        action: str,
        reason: str,
        expected_hash: str | None,
        roles: frozenset[str],
        key: str = "",
    ) -> Sequence[Envelope]:
        with self._store.session() as session:
            held = self._held_for_decision(session, plan_id, expected_hash)
            check_reviewer(held.hold, plan_id, reviewer, roles, action)
            tally = ""  # an approval's count, "2 of 2": each approval's span says it
            if action == "approve":
                # Up front: an approval the gate would refuse must not be counted, nor said
                # to release the plan (a reject still ends it).
                check_releasable(held.hold, held.plan.plan_id)
                check_approver(session, held.hold, held.goal, held.plan, reviewer, roles)
                catalog = self._catalog if self._catalog is not None else read_catalog(session)
                if (misfit := catalog_misfit(held.plan, catalog)) is not None:
                    raise Conflict(f"plan {plan_id} {misfit}")
                withdraw_void_approval(session, held.plan, reviewer, self._approvers)
                needed = approvals_required(held.hold)
                try:
                    count_approval(session, held.plan, reviewer, roles, key)
                except AlreadyApproved:
                    # Approved already, but the approvals recorded may count now where they
                    # did not (a role given back): then this approval releases the plan, which
                    # nothing else would; it stayed held, "2 of 2", for good.
                    counted, _ = counted_approvers(session, held.plan, held.hold, self._approvers)
                    if len(counted) < needed:  # said with how far it is: the page shows it
                        so_far = progress(counted, needed)
                        raise already_approved(reviewer, plan_id, so_far) from None
                # As the gate will count them: "released" must not be said of a plan it holds.
                approvers, _ = counted_approvers(session, held.plan, held.hold, self._approvers)
                tally = f"{len(approvers)} of {needed}"
                if len(approvers) < needed:  # one of several: a decision of the trace too
                    with review_span(held.goal, held.plan, action, reviewer, reason) as span:
                        span.set_attribute("plangate.approvals", tally)
                        count_only(
                            session, held.plan, held.hold, reviewer, approvers, reason, roles
                        )
                    return []
            decision = Decision(
                action=action,
                decided_by=reviewer,
                reason=reason,
                policy_version=_policy_version(held),
            )
            with review_span(held.goal, held.plan, action, reviewer, reason) as span:
                if tally:
                    span.set_attribute("plangate.approvals", tally)
                record_decision(session, held.plan, "human", decision, roles)
                if action == "approve":
                    return [hand_to_gate(session, held.plan, decision, roles=roles)]
                said = person_recorded(roles)
                return [
                    follow_decision(session, held.plan, decision, None, timedelta(0), recorded=said)
                ]

    def _held_for_decision(
        self, session: Session, plan_id: str, expected_hash: str | None
    ) -> HeldPlan:
        plan = by_id(session, PlanRow, PlanRow.plan_id, plan_id, typed=True)
        if plan is None:
            raise NotFound(f"no plan {quoted(plan_id)}; `plangate review list` shows held plans")
        plan_id = plan.plan_id
        # Locked: decisions on one goal, from any replica, take turns. Two approvals of a
        # plan needing two each counted only its own (neither saw the other's, uncommitted)
        # and the plan stayed held at "2 of 2"; one racing a cancel moved a cancelled goal.
        busy = f"goal {plan.goal_id} is being decided elsewhere right now; try again in a moment"
        with waiting_at_most(session, PERSON_LOCK_WAIT_SECONDS, busy):
            goal = session.execute(
                select(GoalRow)
                .where(GoalRow.id == plan.goal_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).scalar_one()
        newest = latest_plan(session, goal.id)
        if newest is not None and newest.plan_id != plan.plan_id:
            raise Conflict(
                f"plan {plan_id} is revision {plan.revision}, but revision {newest.revision} "
                "replaced it; review the newest revision"
            )
        if expected_hash is not None and written_plan_hash(expected_hash) != plan.plan_hash:
            # A revision never changes (an edit is a new plan id): mistyped, or another plan's.
            raise Conflict(
                f"the hash given does not match plan {plan_id}, whose hash is {plan.plan_hash}: "
                f"check that you reviewed this plan (`plangate review show {plan_id}`)"
            )
        if goal.status != "held":
            raise Conflict(f"plan {plan_id} is not waiting for review (the goal is {goal.status})")
        held = self._held(session, goal)
        check_open(held.hold, plan_id, utcnow())
        return held


def _policy_version(held: HeldPlan) -> str:
    return held.policy_decision.policy_version if held.policy_decision else ""
