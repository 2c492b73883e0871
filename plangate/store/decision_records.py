"""Whether the decisions, holds and approvals the views show are the ones the log recorded.

`audit_records` checks who decided what; this checks what else a person reads beside it and
could be rewritten in SQL with the chains still whole: a reviewer's comment and roles, what a
hold asked (roles, approvals, expiry), each reviewer approval the gate counted when it signed,
and the signed approval a plan ran with. Entries written before a field was recorded are not
held against their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plangate.store.audit_recorded import (
    POLICY_DECIDER,
    Recorded,
    other_time,
    shown_as_recorded,
)
from plangate.store.models import ApprovalRow, DecisionRow, HoldRow, ReviewerApprovalRow

CHANGED = "was changed outside plangate"


def hold_asks(hold: HoldRow) -> dict[str, Any]:
    """Return what a hold asks of whoever decides: recorded with the goal's move to `held`."""
    return {
        "required_roles": sorted(str(role) for role in hold.required_roles or []),
        "approvals_required": hold.approvals_required,
        "approver_not_submitter": hold.approver_not_submitter,
        "expires_at": hold.expires_at.astimezone(UTC).isoformat(timespec="microseconds"),
    }


def decision_said_problems(row: DecisionRow, recorded: Recorded) -> Iterator[str]:
    """Name a decision whose reason, rule, policy version or roles are not the ones recorded."""
    if row.decided_by == POLICY_DECIDER:
        said = recorded.policy_said.get(row.plan_id)
    else:
        said = recorded.said.get((row.plan_id, row.decided_by, row.action))
    if said is None:
        return
    # A person's approval moves the goal with plangate's words; theirs are its `comment`.
    reason_key = "comment" if "comment" in said else "reason"
    shown = {
        reason_key: row.reason,
        "rule": row.rule,
        "policy_version": row.policy_version,
        "roles": row.roles,
    }
    whose = "the policy's" if row.decided_by == POLICY_DECIDER else f"{row.decided_by}'s"
    if (at := other_time(row.created_at, said)) is not None:  # `status` shows it as decided_at
        yield (
            f"plan {row.plan_id} shows {whose} decision made at {row.created_at.isoformat()}, "
            f"but its audit log records it at {at}: the decisions table {CHANGED}"
        )
    if _approved_before_comments(row, said, recorded):
        del shown[reason_key]
    for name, value in shown.items():
        if name in said and not shown_as_recorded(value, said[name]):
            field_name = "reason" if name == "comment" else name
            yield (
                f"plan {row.plan_id} shows {whose} decision with the {field_name} {value!r}, "
                f"but its audit log recorded {said[name]!r}: the decisions table {CHANGED}"
            )


# What releases before 15a2fe3 (011f34a among them) recorded as a person's approval's reason.
_OLD_APPROVED = "approved by {}; the gate checks the hold and releases the plan"
_OLD_APPROVERS = "; approved by "


def _approved_before_comments(row: DecisionRow, said: dict[str, Any], recorded: Recorded) -> bool:
    """Say whether a person's approval was recorded by a release that kept no comment of it.

    Releases before 15a2fe3 moved the goal with plangate's words alone ("approved by bob; the
    gate checks the hold ..."), never the reviewer's, which the row keeps: there is nothing to
    hold the row's reason against. A four-eyes approval's row added "; approved by alice, bob"
    (`git show 011f34a:approval_gate/review.py`, line 268): those names, at least, must be
    the approvers the log records.
    """
    if "comment" in said or said.get("reason") != _OLD_APPROVED.format(row.decided_by):
        return False
    _, named, approvers = (row.reason or "").rpartition(_OLD_APPROVERS)
    return not named or set(approvers.split(", ")) == recorded.approved_by(row.plan_id)


def hold_problems(
    session: Session, ids: Sequence[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    """Name a hold asking other roles, approvals or expiry than its goal's move recorded."""
    for hold in session.execute(select(HoldRow).where(HoldRow.goal_id.in_(ids))).scalars():
        said = recorded[hold.goal_id].holds.get(hold.plan_id)
        if said is None:
            continue
        for name, value in hold_asks(hold).items():
            if name in said and not shown_as_recorded(value, said[name]):
                yield (
                    f"plan {hold.plan_id} is shown held with {name} {value!r}, but its audit "
                    f"log recorded {said[name]!r}: the holds table {CHANGED}"
                )


def approval_problems(
    session: Session, ids: Sequence[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    """Name a signed approval a plan ran with that is gone from the approvals table."""
    ran = {
        approval_id: (goal_id, plan_id)
        for goal_id in ids
        for approval_id, plan_id in recorded[goal_id].ran_with.items()
    }
    if not ran:
        return
    rows = session.execute(
        select(ApprovalRow.approval_id, ApprovalRow.plan_id).where(
            ApprovalRow.approval_id.in_(list(ran))
        )
    )
    kept = {str(approval_id): str(plan_id) for approval_id, plan_id in rows}
    for approval_id, (goal_id, plan_id) in sorted(ran.items()):
        if kept.get(approval_id) != plan_id:
            yield (
                f"approval {approval_id}, with which plan {plan_id} of goal {goal_id} ran, "
                f"is gone: who signed it can no longer be shown; the approvals table {CHANGED}"
            )


def reviewer_approval_problems(
    session: Session, ids: Sequence[str], recorded: dict[str, Recorded]
) -> Iterator[str]:
    """Name a counted reviewer approval that is gone, or shown with other roles.

    One read of the reviewer approvals for both: those the gate named when it signed, and the
    roles each approval was counted with.
    """
    signed = {plan: who for goal_id in ids for plan, who in recorded[goal_id].signed_for.items()}
    roles_said = {
        key: roles for goal_id in ids for key, roles in recorded[goal_id].approver_roles.items()
    }
    plans = sorted(signed.keys() | {plan_id for plan_id, _ in roles_said})
    if not plans:
        return
    shown: dict[str, dict[str, list[str]]] = {}  # plan_id: reviewer: roles
    for row in session.execute(
        select(ReviewerApprovalRow).where(ReviewerApprovalRow.plan_id.in_(plans))
    ).scalars():
        roles = sorted(str(role) for role in row.roles or [])
        shown.setdefault(row.plan_id, {})[row.reviewer] = roles
        said = roles_said.get((row.plan_id, row.reviewer))
        if said is not None and not shown_as_recorded(roles, said):
            yield (
                f"plan {row.plan_id} shows {row.reviewer!r}'s approval with the roles {roles}, "
                f"but its audit log counted it with {said}: the reviewer approvals table "
                f"{CHANGED}"
            )
    for plan_id, approvers in sorted(signed.items()):
        for reviewer in approvers:  # a name may be recorded redacted, as any text
            if not any(shown_as_recorded(who, reviewer) for who in shown.get(plan_id, {})):
                yield (
                    f"plan {plan_id}: its audit log records {reviewer!r}'s approval, counted when "
                    f"the gate signed it, which the reviewer approvals table no longer shows: it "
                    f"{CHANGED}"
                )
